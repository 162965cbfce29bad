"""The server's configuration: one typed object, resolved once at start and passed down.

Sources, later ones winning: the defaults below, a YAML or JSON file (``--config``), the
environment (``SIGHTLINE_<FIELD>``, e.g. ``SIGHTLINE_PORT=9000``), then command-line flags
(``--port 9000``). An unknown key or a value of the wrong type is an error naming both.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from serving.batching.policy import BatchPolicy

__all__ = ["ConfigError", "ServerConfig", "load_config"]

ENV_PREFIX = "SIGHTLINE_"
MiB = 1024 * 1024
MESSAGE_ROOM = 4096  # bytes a request needs besides its image


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServerConfig:
    # Where models come from: a repository (models/<name>/<version>/) or one model directory.
    model_repository: str = "models"
    model_dir: str = ""  # set: serve this one directory, no repository polling
    version_policy: str = "latest"  # latest | all | specific
    keep_versions: int = 1  # versions served under "latest"
    versions: str = ""  # comma-separated, for "specific"
    poll_seconds: float = 2.0  # how often the repository is scanned for new versions
    default_model: str = ""  # requests that name no model; empty: the only model

    # A/B experiments (docs/ab-testing.md), reloaded with the repository's poll.
    experiments_file: str = ""  # "": <model_repository>/experiments.yaml, when it exists
    feedback_key_file: str = ""  # HMAC key of signed request ids; "": one made per process
    decide_seconds: float = 1.0  # how often each experiment's decision is taken

    host: str = "[::]"
    port: int = 8500
    # Server processes sharing the port (SO_REUSEPORT; serving/api/processes.py); 0: one per
    # core this process may run on. Each runs a whole server; metrics, A/B decisions and
    # shutdown stay the server's as one. On Kubernetes: 1, and scale by pods (k8s/base).
    processes: int = 0
    # Handler threads (docs/limits.md): unary calls past grpc_threads in flight and streams past
    # max_streams open get RESOURCE_EXHAUSTED at once; health checks keep threads of their own.
    grpc_threads: int = 128  # the most unary calls in flight
    max_streams: int = 32  # the most streaming calls open (ClassifyStream, reflection)
    stream_idle_seconds: float = 30.0  # a ClassifyStream with nothing sent or owed is closed
    # A unary call is refused at once when the wait it can expect exceeds this share of what its
    # deadline leaves (serving/api/admission.py says why only a share).
    admit_wait_share: float = 1 / 3

    # Dynamic batching, per model version.
    # Batching: the defaults are BatchPolicy's (serving/batching/policy.py), written once.
    max_batch_size: int = BatchPolicy.max_batch_size
    max_queue_delay_ms: float = BatchPolicy.max_queue_delay_s * 1000  # a lone request's wait
    max_queue_size: int = BatchPolicy.max_queue_size  # past this: RESOURCE_EXHAUSTED
    wait_when_idle: bool = BatchPolicy.wait_when_idle  # wait out the delay even when idle
    workers: int = 0  # interpreter threads per version; 0: one per CPU core
    interpreter_threads: int = 1  # LiteRT threads per interpreter

    # Input limits. An image over max_image_bytes gets its own too_large answer (in a stream,
    # only its response); a message over max_message_bytes is refused by gRPC itself, which
    # ends a stream. So the message limit leaves room for an image past its limit.
    max_message_bytes: int = 17 * MiB  # gRPC receive and send limit
    max_image_bytes: int = 16 * MiB
    # Images in one OIP ModelInfer or one ClassifyBatch (capped at max_queue_size).
    max_request_images: int = 64
    max_image_pixels: int = 4096 * 4096  # decoded width x height (decompression bombs)
    max_concurrent_decodes: int = 0  # images decoding at once (memory); 0: two per core

    # Connections: Kubernetes spreads load only when connections are recycled.
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 30.0
    compression: str = "none"  # none | gzip | deflate: the default for responses
    # SIGTERM (docs/shutdown.md): health turns NOT_SERVING and the server goes on serving for
    # drain_seconds (Kubernetes' preStop time: endpoints move traffic away), then refuses new
    # calls with UNAVAILABLE and gives the calls in flight up to grace_seconds to finish.
    drain_seconds: float = 5.0
    grace_seconds: float = 20.0

    # Security.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set: mutual TLS, clients must present a certificate it signed
    auth_token_file: str = ""  # set: requests need "authorization: Bearer <token>"
    admin_token_file: str = ""  # set: SetWeight, Rollback and Promote need one of its tokens

    # Metrics: Prometheus text on http://<metrics_host>:<metrics_port>/metrics; -1 turns metrics
    # off entirely (nothing is counted). With auth_token_file set, /metrics needs a token too
    # unless metrics_auth is false (a warning says so at start).
    metrics_port: int = 8502
    metrics_host: str = ""  # empty: the gRPC host
    metrics_auth: bool = True
    low_confidence: float = 0.5  # top-1 probability under this counts as a low-confidence answer
    drift_window: int = 1000  # requests per model in the sliding drift window
    drift_min_samples: int = 500  # below this, drift reads 0 (sampling noise is ~0.1 PSI at 100)
    drift_warn: float = 0.1  # PSI / KS levels, exported as sightline_drift_threshold{level}:
    drift_alert: float = 0.2  # the dashboards and the SightlineDataDrift alert read them

    log_format: str = "text"  # text | json
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        choices = {"version_policy": ("latest", "all", "specific"),
                   "compression": ("none", "gzip", "deflate"), "log_format": ("text", "json")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}; got {getattr(self, name)!r}")
        positive = ("port", "grpc_threads", "max_streams", "stream_idle_seconds",
                    "max_batch_size", "max_queue_size", "max_message_bytes", "max_image_bytes",
                    "max_request_images", "max_image_pixels", "keep_versions",
                    "interpreter_threads", "drift_window", "drift_min_samples", "decide_seconds")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive; got {getattr(self, name)}")
        if self.max_message_bytes < self.max_image_bytes + MESSAGE_ROOM:
            raise ConfigError(
                f"max_message_bytes ({self.max_message_bytes}) must exceed max_image_bytes "
                f"({self.max_image_bytes}) by at least {MESSAGE_ROOM}, so that an image over "
                "its limit gets a too_large answer instead of ending a stream")
        for name in ("drain_seconds", "grace_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if not 0 < self.admit_wait_share <= 1:
            raise ConfigError(f"admit_wait_share must be in (0, 1]; got {self.admit_wait_share}")
        if self.processes < 0:
            raise ConfigError(f"processes must be >= 0 (0: one per core); got {self.processes}")
        if self.max_concurrent_decodes < 0:
            raise ConfigError(f"max_concurrent_decodes must be >= 0; got "
                              f"{self.max_concurrent_decodes}")
        if self.metrics_port < -1:
            raise ConfigError(f"metrics_port must be a port, 0 (any) or -1 (off); got "
                              f"{self.metrics_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together; got only one")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")

    @property
    def process_count(self) -> int:
        return self.processes or _cores()

    @property
    def worker_count(self) -> int:
        """Interpreter threads per version in each process: the cores shared among them."""
        return self.workers or max(1, _cores() // self.process_count)

    @property
    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(max_batch_size=self.max_batch_size,
                           max_queue_delay_s=self.max_queue_delay_ms / 1000,
                           max_queue_size=self.max_queue_size, workers=self.worker_count,
                           wait_when_idle=self.wait_when_idle)

    @property
    def decode_slots(self) -> int:
        """Concurrent decodes in each process: two per core for the whole server."""
        return self.max_concurrent_decodes or max(1, 2 * _cores() // self.process_count)

    @property
    def request_image_limit(self) -> int:
        """Images one request may carry: never more than the queue holds, or a retry on an idle
        server could never succeed."""
        return min(self.max_request_images, self.max_queue_size)

    @property
    def metrics_address(self) -> str:
        """Where /metrics listens: metrics_host, else the gRPC host without its brackets."""
        return self.metrics_host or self.host.strip("[]")


def _cores() -> int:
    """The cores this process may run on (its affinity, as taskset or a cpuset sets it)."""
    return len(os.sched_getaffinity(0)) or 1


def _convert(name: str, kind: type, value: Any) -> Any:
    if isinstance(value, str) and kind is not str:
        try:
            return {bool: lambda v: v.lower() in ("1", "true", "yes", "on"), int: int,
                    float: float}[kind](value)
        except ValueError:
            raise ConfigError(f"{name} must be {kind.__name__}; got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind.__name__}; got {value!r}")
    return value


def _types() -> dict[str, type]:
    return {f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type]
            for f in fields(ServerConfig)}


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None
                ) -> ServerConfig:
    """Defaults < file < environment < flags -> a checked ServerConfig."""
    types = _types()
    parser = argparse.ArgumentParser(prog="sightline-serve", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML or JSON file of settings")
    for name in types:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None,
                            help=f"(env {ENV_PREFIX}{name.upper()})")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values.update(_read_file(Path(args.config)))
    environ = os.environ if environ is None else environ
    for name in types:
        if f"{ENV_PREFIX}{name.upper()}" in environ:
            values[name] = environ[f"{ENV_PREFIX}{name.upper()}"]
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(types)}")
    return ServerConfig(**{k: _convert(k, types[k], v) for k, v in values.items()})


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings; got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}

