"""TF_CONFIG from a Kubernetes Indexed Job's variables: the addresses, the index, the errors.

Pure functions over a dict standing in for the environment; one test runs the command line to
show that a pod missing a variable fails before TensorFlow is imported.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from training import cluster
from training.errors import UserError

JOB = {
    "JOB_COMPLETION_INDEX": "1",
    "SIGHTLINE_TRAIN_WORKERS": "2",
    "SIGHTLINE_TRAIN_JOB_NAME": "sightline-train",
    "SIGHTLINE_TRAIN_SERVICE": "sightline-train-workers",
    "SIGHTLINE_TRAIN_NAMESPACE": "ml",
}
HOSTS = ["sightline-train-0.sightline-train-workers.ml.svc:2222",
         "sightline-train-1.sightline-train-workers.ml.svc:2222"]


def test_hosts_are_the_indexed_pods_dns_names_in_index_order():
    assert cluster.worker_hosts(2, "sightline-train", "sightline-train-workers", "ml") == HOSTS
    assert cluster.worker_hosts(3, "job", "svc", "default", port=5000)[2] == \
        "job-2.svc.default.svc:5000"


@pytest.mark.parametrize("index", [0, 1])
def test_every_pod_gets_the_same_cluster_and_its_own_task(index):
    tf_config = cluster.build_tf_config(index, 2, "sightline-train", "sightline-train-workers",
                                        "ml")
    assert tf_config == {"cluster": {"worker": HOSTS},
                         "task": {"type": "worker", "index": index}}


def test_from_env_reads_the_jobs_variables():
    assert cluster.tf_config_from_env(JOB) == {
        "cluster": {"worker": HOSTS}, "task": {"type": "worker", "index": 1}}
    with_port = cluster.tf_config_from_env({**JOB, "SIGHTLINE_TRAIN_PORT": "12345"})
    assert with_port["cluster"]["worker"][0].endswith(".ml.svc:12345")


def test_configure_sets_tf_config_as_json_once():
    environ = dict(JOB)
    built = cluster.configure_tf_config(environ)
    assert json.loads(environ["TF_CONFIG"]) == built and built["task"]["index"] == 1
    assert cluster.configure_tf_config(environ) is None  # now set: left alone
    assert json.loads(environ["TF_CONFIG"]) == built


def test_an_explicit_tf_config_wins():
    explicit = json.dumps({"cluster": {"worker": ["10.0.0.1:1", "10.0.0.2:1"]},
                           "task": {"type": "worker", "index": 0}})
    environ = {**JOB, "TF_CONFIG": explicit}
    assert cluster.configure_tf_config(environ) is None
    assert environ["TF_CONFIG"] == explicit


def test_without_the_jobs_variables_nothing_is_built():
    environ = {"HOME": "/home/me", "SIGHTLINE_TRAIN_NAMESPACE": "ml"}  # namespace alone: not a Job
    assert cluster.configure_tf_config(environ) is None
    assert "TF_CONFIG" not in environ


@pytest.mark.parametrize("missing", ["JOB_COMPLETION_INDEX", "SIGHTLINE_TRAIN_WORKERS",
                                     "SIGHTLINE_TRAIN_JOB_NAME", "SIGHTLINE_TRAIN_SERVICE",
                                     "SIGHTLINE_TRAIN_NAMESPACE"])
def test_a_missing_variable_is_named(missing):
    environ = {name: value for name, value in JOB.items() if name != missing}
    with pytest.raises(UserError, match=f"^{missing} is not set"):
        cluster.tf_config_from_env(environ)
    with pytest.raises(UserError, match=f"^{missing} is not set"):
        cluster.tf_config_from_env({**environ, missing: "  "})  # blank is missing too


@pytest.mark.parametrize("name, value", [
    ("JOB_COMPLETION_INDEX", "one"),
    ("JOB_COMPLETION_INDEX", "0.5"),
    ("SIGHTLINE_TRAIN_WORKERS", "2.0"),
    ("SIGHTLINE_TRAIN_PORT", "grpc"),
])
def test_a_non_integer_is_named_with_its_value(name, value):
    with pytest.raises(UserError, match=f"^{name} must be an integer; got '{value}'$"):
        cluster.tf_config_from_env({**JOB, name: value})


@pytest.mark.parametrize("index", ["2", "7", "-1"])
def test_an_index_out_of_range(index):
    with pytest.raises(UserError, match=f"worker index {index} is out of range for 2 workers "
                                        r"\(0-1\)"):
        cluster.tf_config_from_env({**JOB, "JOB_COMPLETION_INDEX": index})


@pytest.mark.parametrize("name, value, fragment", [
    ("SIGHTLINE_TRAIN_WORKERS", "0", "number of workers must be >= 1; got 0"),
    ("SIGHTLINE_TRAIN_PORT", "70000", "worker port must be within 1-65535; got 70000"),
    ("SIGHTLINE_TRAIN_PORT", "0", "worker port must be within 1-65535; got 0"),
    ("SIGHTLINE_TRAIN_JOB_NAME", "Train_1", "job name 'Train_1' is not a DNS label"),
    ("SIGHTLINE_TRAIN_SERVICE", "workers.ml", "service 'workers.ml' is not a DNS label"),
    ("SIGHTLINE_TRAIN_NAMESPACE", "-ml", "namespace '-ml' is not a DNS label"),
])
def test_invalid_values(name, value, fragment):
    with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
        cluster.tf_config_from_env({**JOB, name: value})


@pytest.mark.parametrize("task_type, task_id, jobs, expected", [
    ("worker", 0, {"worker": ["a", "b"]}, True),
    ("worker", 1, {"worker": ["a", "b"]}, False),
    ("worker", 0, {"chief": ["c"], "worker": ["a"]}, False),  # an explicit chief is the chief
    ("chief", 0, {"chief": ["c"], "worker": ["a"]}, True),
    (None, None, {}, True),  # no cluster at all: one local worker
])
def test_the_chief(task_type, task_id, jobs, expected):
    assert cluster.is_chief(task_type, task_id, jobs) is expected


def test_a_pod_missing_a_variable_fails_on_the_command_line_before_tensorflow():
    env = {name: value for name, value in os.environ.items()
           if name not in ("TF_CONFIG", "SIGHTLINE_TRAIN_PORT", *JOB)}
    env.update({"JOB_COMPLETION_INDEX": "0", "SIGHTLINE_TRAIN_JOB_NAME": "sightline-train"})
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from training.__main__ import main; code = main(); "
         "sys.exit(3 if 'tensorflow' in sys.modules else code)",
         "train", "--set", "strategy=multiworker"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: SIGHTLINE_TRAIN_WORKERS is not set (the Job's completions); the "
                      "Indexed Job's TF_CONFIG needs it"], result.stderr
