"""The Sightline gRPC server: ``create_server(config)`` builds it, ``serve(config)`` runs it.

Start-up: models load and warm up (health NOT_SERVING until one is ready) → the server listens
with health, reflection, limits, keepalive and optional TLS / bearer auth → the repository is
polled for new versions. Shutdown (SIGTERM or SIGINT; docs/shutdown.md):
1. health turns NOT_SERVING, and the server goes on serving for ``drain_seconds``, so that load
   balancers and Kubernetes endpoints move traffic away (a second signal cuts this short);
2. new calls get UNAVAILABLE (retryable elsewhere); open streams answer what they read and end;
3. the calls in flight finish, for up to ``grace_seconds``: none is cancelled inside the grace;
4. gRPC stops, batchers drain, models unload, the process exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from PIL import Image
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from serving.api import classifier as classifier_module
from serving.api import experiments as experiments_module
from serving.api import oip
from serving.api.admission import Admission, AdmittedExecutor
from serving.api.auth import BearerTokenInterceptor, read_tokens
from serving.api.health import SERVICE_NAME as HEALTH_SERVICE
from serving.api.health import Health
from serving.api.processes import serve_processes
from serving.config import ConfigError, ServerConfig, load_config
from serving.errors import FailedPrecondition
from serving.image.decode import DecodeLimits
from serving.inference.attachments import AttachingLoader
from serving.inference.dataplane import Inference
from serving.inference.observer import NO_OBSERVER
from serving.inference.shadow import Shadow
from serving.observe.interceptor import GrpcMetricsInterceptor
from serving.observe.logs import setup_logging
from serving.observe.metrics import ServingMetrics
from serving.observe.metrics_http import MetricsServer
from serving.repository.loader import LoadError
from serving.repository.manager import ModelManager
from serving.repository.policy import parse_policy
from serving.repository.publish import DeployError, set_label
from serving.repository.source import DirectorySource
from serving.routing.feedback import FeedbackKey
from serving.routing.live import LiveExperiments
from serving.runtime.interpreter import TFLiteModel

__all__ = ["Server", "create_server", "main", "serve"]

log = logging.getLogger("sightline.server")
SERVICES = ("", classifier_module.SERVICE_NAME, oip.SERVICE_NAME,
            experiments_module.SERVICE_NAME)  # "": the server as a whole
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT}
QUIET_SECONDS = 0.1  # shutdown: no refused call for this long means gRPC's queue is empty
COMPRESSION = {"none": grpc.Compression.NoCompression, "gzip": grpc.Compression.Gzip,
               "deflate": grpc.Compression.Deflate}


@dataclass
class Server:
    """A built server and its parts; ``start``/``stop`` are its whole lifecycle."""

    config: ServerConfig
    grpc_server: grpc.Server
    port: int
    inference: Inference
    manager: ModelManager
    health: Health
    source: DirectorySource | None = None
    metrics: ServingMetrics | None = None
    metrics_port: int | None = None  # the bound metrics port, when metrics are on
    admission: Admission | None = None
    classifier: classifier_module.ClassifierService | None = None
    tokens: list[bytes] | None = None  # bearer tokens, when auth is on
    experiments: LiveExperiments | None = None
    _metrics_http: MetricsServer | None = None
    _stop_polling: threading.Event = field(default_factory=threading.Event)
    _hurry: threading.Event = field(default_factory=threading.Event)  # cut the drain delay short
    _stopped: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        if self.metrics is not None:
            self._start_metrics_http()
        self.grpc_server.start()
        if self.source is not None:
            self._poll()
            threading.Thread(target=self._poll_until_stopped, name="repository-poller",
                             daemon=True).start()
        if self.experiments is not None:
            self.experiments.start()
        self.update_health()
        log.info("serving on port %d: models %s", self.port, self.manager.models())

    def _start_metrics_http(self) -> None:
        config = self.config
        tokens = self.tokens if config.metrics_auth else None
        self._metrics_http = MetricsServer(config.metrics_address, config.metrics_port,
                                           self.metrics.registry, tokens=tokens)
        self._metrics_http.start()
        self.metrics_port = self._metrics_http.port
        url = f"http://{config.metrics_address}:{self.metrics_port}/metrics"
        if self.tokens is not None and tokens is None:
            log.warning("metrics on %s answer without a token although gRPC needs one "
                        "(metrics_auth is false)", url)
        else:
            log.info("metrics on %s (%s)", url, "bearer token" if tokens else "no token")

    def _poll(self) -> None:
        try:
            self.source.poll(self.manager)
        except Exception:  # a bad scan must not end polling; the next one may succeed
            log.exception("scanning %s failed", self.source.base_dir)
        self.update_health()  # after the manager published what the scan loaded

    def _poll_until_stopped(self) -> None:
        while not self._stop_polling.wait(self.source.interval_seconds):
            self._poll()

    def update_health(self) -> None:
        serving = self.manager.ready() and not self._stop_polling.is_set()
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in SERVICES:
            self.health.set(name, status)

    def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Graceful, in the order of the module docstring; ``drain`` and ``grace`` default to
        the config's drain_seconds and grace_seconds."""
        if self._stopped.is_set():
            return
        config = self.config
        drain = config.drain_seconds if drain is None else drain
        grace = config.grace_seconds if grace is None else grace
        self._stop_polling.set()
        self.health.enter_graceful_shutdown()  # NOT_SERVING everywhere, and it stays so
        log.info("shutting down: health NOT_SERVING; serving on for %gs (drain_seconds; a "
                 "second signal cuts it short)", drain)
        self._hurry.wait(drain)
        self.admission.close()
        self.classifier.close_streams()
        log.info("refusing new calls; finishing %d in flight (grace %gs)",
                 self.admission.in_flight(), grace)
        ends = time.monotonic() + grace
        if not self.admission.wait_idle(grace):
            log.warning("%d calls still in flight after the grace; cancelling them",
                        self.admission.in_flight())
        # Calls still queued inside gRPC get their UNAVAILABLE before gRPC's stop, which would
        # cancel them; then what is left are Health/Watch streams, cancelled after a moment
        # that lets the last responses leave.
        self.admission.wait_quiet(QUIET_SECONDS, min(1.0, max(0.0, ends - time.monotonic())))
        self.grpc_server.stop(min(grace, 1.0)).wait()
        if self.experiments is not None:
            self.experiments.stop()
        if self.inference.shadow is not None:
            self.inference.shadow.close()
        self.manager.close(timeout=grace)
        if self._metrics_http is not None:
            self._metrics_http.stop()
        self._stopped.set()
        log.info("stopped")

    def hurry(self) -> None:
        """Cut the drain delay short (a second SIGTERM or Ctrl-C)."""
        self._hurry.set()

    def wait(self) -> None:
        self._stopped.wait()


def create_server(config: ServerConfig, port: int | None = None,
                  registry: CollectorRegistry | None = None,
                  feedback_key: FeedbackKey | None = None, in_group: bool = False) -> Server:
    """Load the models and build the server (not started). ``port`` 0 picks a free port;
    ``registry`` (default: a new one) receives the metrics; ``feedback_key`` (default: the
    config's file, else one made here) signs request ids; ``in_group``: one of the processes
    of ``serving.api.processes``, sharing its port and taking its A/B decisions."""
    metrics = (ServingMetrics(registry, low_confidence=config.low_confidence,
                              drift_warn=config.drift_warn, drift_alert=config.drift_alert)
               if config.metrics_port >= 0 else None)
    if metrics is not None and registry is None:  # the process's CPU, memory and GC
        ProcessCollector(registry=metrics.registry)
        GCCollector(registry=metrics.registry)
        PlatformCollector(registry=metrics.registry)
    loader = AttachingLoader(
        lambda path: TFLiteModel(path, num_threads=config.interpreter_threads),
        config.batch_policy, observer=metrics or NO_OBSERVER,
        drift=(config.drift_window, config.drift_min_samples))
    health_servicer = Health()
    on_event = metrics.model_event if metrics is not None else None
    source = None
    if config.model_dir:
        manager = ModelManager.from_directory(config.model_dir, loader=loader, on_event=on_event)
    else:
        manager = ModelManager(loader=loader, on_event=on_event)
        source = DirectorySource(config.model_repository, _policy(config),
                                 interval_seconds=config.poll_seconds)
    experiments = LiveExperiments.build(config, feedback_key, shared=in_group)
    shadow = Shadow(manager, experiments.router)
    inference = Inference(
        manager, default_model=config.default_model, observer=metrics or NO_OBSERVER,
        limits=DecodeLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels),
        max_decodes=config.decode_slots, router=experiments.router, shadow=shadow)
    if metrics is not None:
        metrics.watch(manager, experiments.router, window_counts=in_group)

    tokens = read_tokens(config.auth_token_file) if config.auth_token_file else None
    admin_tokens = read_tokens(config.admin_token_file) if config.admin_token_file else None
    admission = Admission(
        config.grpc_threads, config.max_streams, wait_share=config.admit_wait_share,
        on_refused=None if metrics is None else (
            lambda reason: metrics.rejected_request(reason, "Overloaded")))
    grpc_server = grpc.server(
        AdmittedExecutor(admission),
        # Auth first: it decides per call. Admission and metrics wrap each method's handler
        # once, which is only right behind interceptors that decide per call; each interceptor
        # that refuses counts its own refusals.
        interceptors=[*_interceptors(tokens, admin_tokens, metrics), admission,
                      *([GrpcMetricsInterceptor(metrics)] if metrics else [])],
        options=_options(config, reuse_port=in_group),
        compression=COMPRESSION[config.compression],
        maximum_concurrent_rpcs=admission.threads,  # past every limit gRPC refuses by itself
    )
    service_pb = classifier_module.pb_grpc
    classifier = classifier_module.ClassifierService(
        inference, idle_seconds=config.stream_idle_seconds, max_images=config.request_image_limit)
    service_pb.add_ImageClassifierServicer_to_server(classifier, grpc_server)
    oip.pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        oip.InferenceService(inference, max_images=config.request_image_limit), grpc_server)
    experiments_module.pb_grpc.add_ExperimentsServicer_to_server(
        experiments_module.ExperimentsService(
            experiments.router, inference,
            promote=None if config.model_dir else lambda e: _promote(manager, config, e)),
        grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    for name in SERVICES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (*SERVICES[1:], HEALTH_SERVICE, reflection.SERVICE_NAME), grpc_server)
    address = f"{config.host}:{config.port if port is None else port}"
    bound = _bind(grpc_server, address, config)
    return Server(config, grpc_server, bound, inference, manager, health_servicer, source,
                  metrics, admission=admission, classifier=classifier, tokens=tokens,
                  experiments=experiments)


def _promote(manager: ModelManager, config: ServerConfig, experiment) -> None:
    """Make the candidate the baseline: point the baseline's label at the candidate's version
    (labels.json, replaced atomically; the next poll serves it)."""
    if experiment.baseline.label is None:
        raise FailedPrecondition("not_labelled", f"experiment {experiment.name}'s baseline is "
                                 "a fixed version; promotion moves a label, so give the "
                                 "baseline as a label")
    version = experiment.candidate.version or manager.labels().get(
        experiment.model, {}).get(experiment.candidate.label)
    if version is None or version not in manager.models().get(experiment.model, []):
        raise FailedPrecondition("not_served", f"the candidate ({experiment.candidate}) is "
                                 "not served, so pointing the baseline's label at it would "
                                 "leave the label dangling")
    try:
        set_label(Path(config.model_repository) / experiment.model, experiment.baseline.label,
                  version)
    except DeployError as exc:
        raise FailedPrecondition("labels", str(exc)) from None


def _policy(config: ServerConfig):
    if config.version_policy == "latest":
        return parse_policy(f"latest:{config.keep_versions}")
    if config.version_policy == "specific":
        return parse_policy(f"specific:{config.versions}")
    return parse_policy("all")


def _options(config: ServerConfig, reuse_port: bool) -> list[tuple[str, int]]:
    ms = lambda seconds: int(seconds * 1000)  # noqa: E731
    return [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.keepalive_time_ms", ms(config.keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout_seconds)),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", ms(config.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", ms(config.max_connection_age_grace_seconds)),
        # A second server on the same port is an error, not a split, unless it is one of ours.
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def _interceptors(tokens: list[bytes] | None, admin_tokens: list[bytes] | None,
                  metrics: ServingMetrics | None) -> list[grpc.ServerInterceptor]:
    if tokens is None and admin_tokens is None:
        return []
    refused = None if metrics is None else (
        lambda: metrics.rejected_request("unauthenticated", "Unauthenticated"))
    return [BearerTokenInterceptor(tokens, on_refused=refused, admin_tokens=admin_tokens)]


def _bind(grpc_server: grpc.Server, address: str, config: ServerConfig) -> int:
    """The bound port; ConfigError when the address cannot be listened on (older grpcio
    returned port 0, 1.85 raises RuntimeError)."""
    try:
        if not config.tls_cert:
            port = grpc_server.add_insecure_port(address)
        else:
            key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
            client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=client_ca,
                require_client_auth=client_ca is not None)
            port = grpc_server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address} (in use?): {exc}") from None
    if port == 0:
        raise ConfigError(f"cannot listen on {address} (in use?)")
    return port


def serve(config: ServerConfig, feedback_key: FeedbackKey | None = None,
          on_metrics_port: Callable[[int], None] | None = None) -> None:
    """Run one server process until SIGTERM or SIGINT, then shut down gracefully. Given
    ``on_metrics_port`` (told the bound metrics port once serving), it is one process of a
    group (``serving.api.processes``).

    The signal handlers do nothing themselves: Python writes each signal's number to a wakeup
    pipe, and one thread reads it and acts. A handler runs in the main thread between any two
    bytecodes, and one that set an Event while the main thread was inside that Event's own
    wait would deadlock on its lock (a second SIGTERM that never ends the drain)."""
    server = create_server(config, feedback_key=feedback_key,
                           in_group=on_metrics_port is not None)
    stop = threading.Event()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, lambda *_: None)

    def take_signals() -> None:
        taken = 0
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while taken < 2 and (byte := pipe.read(1)):
                if byte[0] not in SHUTDOWN_SIGNALS:
                    continue
                taken += 1
                if taken == 1:
                    stop.set()
                else:
                    server.hurry()  # a second signal: skip what is left of the drain delay

    threading.Thread(target=take_signals, name="signals", daemon=True).start()
    server.start()
    if on_metrics_port is not None:
        on_metrics_port(server.metrics_port or 0)
    try:
        stop.wait()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"sightline-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(config.log_format, config.log_level)
    _return_big_buffers_to_the_system()
    # Decode refuses bombs itself; as errors, Pillow's warnings also stop filling its registry.
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    try:
        if config.process_count > 1:
            raise SystemExit(serve_processes(config, serve))
        serve(config)
    except (ConfigError, LoadError, OSError) as exc:
        log.error("cannot serve: %s", exc)
        raise SystemExit(2) from None


def _return_big_buffers_to_the_system() -> None:
    """glibc raises its mmap threshold after each large free, so decode buffers (tens of MB)
    then come from per-thread arenas that keep them: 120 concurrent 4096 x 4096 PNGs peaked at
    1.3 GB resident, and at 420 MB with this fixed threshold. Not glibc: nothing to do."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    main()
