"""TF_CONFIG for a Kubernetes Indexed Job: every worker's address, built from the pod's index.

``MultiWorkerMirroredStrategy`` learns its cluster from the ``TF_CONFIG`` environment variable:
the address of every worker and which one this process is. Kubeflow's operator used to write it;
Kubeflow Trainer v2 dropped TensorFlow, so Sightline runs a plain Indexed Job and builds the
variable itself. An Indexed Job gives pod ``i`` the hostname ``<job-name>-<i>`` and the
variable ``JOB_COMPLETION_INDEX=i``; with the pod template's ``subdomain`` set to a headless
Service, that pod resolves as ``<job-name>-<i>.<service>.<namespace>.svc``. So every pod can
write down the same worker list and put its own index in ``task``, with no launcher and no
call to the Kubernetes API:

    JOB_COMPLETION_INDEX       set by Kubernetes: this pod's index, 0 .. workers - 1
    SIGHTLINE_TRAIN_WORKERS    the Job's completions (= parallelism): how many workers
    SIGHTLINE_TRAIN_JOB_NAME   the Job's metadata.name
    SIGHTLINE_TRAIN_SERVICE    the headless Service, the pod template's subdomain
    SIGHTLINE_TRAIN_NAMESPACE  the pod's namespace (downward API: metadata.namespace)
    SIGHTLINE_TRAIN_PORT       the workers' gRPC port (default 2222, TensorFlow's usual)

(``SIGHTLINE_TRAIN_``, not ``SIGHTLINE_``: the server reads ``SIGHTLINE_<setting>``, and its
``SIGHTLINE_WORKERS`` is a count of server processes.)

An explicit ``TF_CONFIG`` always wins, and with none of the Job's variables set nothing is
built: the strategy is then one local worker, as on a laptop. Worker 0 is the chief; it alone
writes the artifact (``is_chief``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping

from training.errors import UserError

__all__ = [
    "DEFAULT_PORT",
    "build_tf_config",
    "configure_tf_config",
    "is_chief",
    "tf_config_from_env",
    "worker_hosts",
]

INDEX = "JOB_COMPLETION_INDEX"
WORKERS = "SIGHTLINE_TRAIN_WORKERS"
JOB_NAME = "SIGHTLINE_TRAIN_JOB_NAME"
SERVICE = "SIGHTLINE_TRAIN_SERVICE"
NAMESPACE = "SIGHTLINE_TRAIN_NAMESPACE"
PORT = "SIGHTLINE_TRAIN_PORT"
DEFAULT_PORT = 2222

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1123, as Kubernetes checks


def worker_hosts(workers: int, job_name: str, service: str, namespace: str,
                 port: int = DEFAULT_PORT) -> list[str]:
    """``host:port`` of every worker, in index order: the pods' DNS names under the Service."""
    for what, name in (("job name", job_name), ("service", service), ("namespace", namespace)):
        if not _DNS_LABEL.fullmatch(name):
            raise UserError(f"{what} {name!r} is not a DNS label (lower-case letters, digits "
                            "and '-', at most 63 characters)")
    if workers < 1:
        raise UserError(f"the number of workers must be >= 1; got {workers}")
    if not 1 <= port <= 65535:
        raise UserError(f"the worker port must be within 1-65535; got {port}")
    return [f"{job_name}-{index}.{service}.{namespace}.svc:{port}" for index in range(workers)]


def build_tf_config(index: int, workers: int, job_name: str, service: str, namespace: str,
                    port: int = DEFAULT_PORT) -> dict:
    """The TF_CONFIG of pod ``index``: the same cluster on every pod, its own task."""
    hosts = worker_hosts(workers, job_name, service, namespace, port)
    if not 0 <= index < workers:
        raise UserError(f"worker index {index} is out of range for {workers} workers "
                        f"(0-{workers - 1})")
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def tf_config_from_env(environ: Mapping[str, str]) -> dict | None:
    """TF_CONFIG from the Indexed Job's variables; None when TF_CONFIG is already set (it wins)
    or when none of the Job's variables are (a single local worker).

    Once any of them is set the pod is meant to be one of several workers, so a missing one is
    an error that names it, not a silent fall back to training alone.
    """
    if environ.get("TF_CONFIG"):
        return None
    if not any(environ.get(name) for name in (INDEX, WORKERS, JOB_NAME, SERVICE)):
        return None
    return build_tf_config(
        index=_integer(environ, INDEX, "set by Kubernetes in a Job with completionMode: Indexed"),
        workers=_integer(environ, WORKERS, "the Job's completions"),
        job_name=_required(environ, JOB_NAME, "the Job's metadata.name"),
        service=_required(environ, SERVICE, "the headless Service, the pods' subdomain"),
        namespace=_required(environ, NAMESPACE, "the downward API's metadata.namespace"),
        port=_integer(environ, PORT, "the workers' gRPC port") if environ.get(PORT)
        else DEFAULT_PORT,
    )


def configure_tf_config(environ: MutableMapping[str, str] = os.environ) -> dict | None:
    """Set TF_CONFIG from the Job's variables before the strategy reads it; returns what it set.

    Idempotent: a second call finds TF_CONFIG set and leaves it alone.
    """
    tf_config = tf_config_from_env(environ)
    if tf_config is not None:
        environ["TF_CONFIG"] = json.dumps(tf_config)
    return tf_config


def is_chief(task_type: str | None, task_id: int | None, cluster: Mapping[str, list]) -> bool:
    """The one worker that writes the artifact: the ``chief`` task when the cluster has one,
    else worker 0; a process with no task at all is a single local worker, so the chief."""
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def _required(environ: Mapping[str, str], name: str, meaning: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise UserError(f"{name} is not set ({meaning}); the Indexed Job's TF_CONFIG needs it")
    return value


def _integer(environ: Mapping[str, str], name: str, meaning: str) -> int:
    value = _required(environ, name, meaning)
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name} must be an integer; got {value!r}") from None
