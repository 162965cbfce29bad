"""Prometheus metrics: the definitions (``monitoring/METRICS.md`` is the contract), the gRPC
interceptor that counts every RPC, and the observer the inference path reports to.

The registry is passed in, so each test builds a fresh one. Metrics wrap the data path rather
than live in it: ``GrpcMetricsInterceptor`` wraps every service; ``ServingMetrics`` implements
the ``Inference`` observer hooks (``request_done``, ``rejected``, ``batch``) and the model
manager's ``on_event`` hook; gauges that describe state (queue depth, served versions, drift)
are read at scrape time by a collector, so they are never stale. Label values are bounded:
``model`` and ``class`` only ever take values from loaded model cards, never from requests.
"""

from __future__ import annotations

import collections
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.image.decode import REASONS as DECODE_REASONS
from serving.observe.deferred import DeferredCounter, DeferredHistogram

__all__ = ["GrpcMetricsInterceptor", "ServingMetrics", "SLO_SECONDS"]

NAN = float("nan")
LIMIT = 50_000  # log entries before a writer folds them itself: bounded memory without scrapes
SLO_SECONDS = 0.1  # the latency SLO: a bucket boundary in every latency histogram
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, SLO_SECONDS, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
STAGES = ("decode", "queue", "inference", "explain", "total")
REJECTION_REASONS = ("queue_full", "deadline", "cancelled", "not_ready", "closing", "bad_input",
                     "unknown_model", "unauthenticated", "busy", "would_miss_deadline")


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *,
                 low_confidence: float = 0.5, drift_warn: float = 0.1, drift_alert: float = 0.2):
        self.registry = registry if registry is not None else CollectorRegistry()
        self.low_confidence = low_confidence
        r = self.registry
        threshold = Gauge("sightline_drift_threshold", "Drift (PSI or KS) above this is a "
                          "warning or an alert, as the server is configured.", ["level"],
                          registry=r)
        threshold.labels("warn").set(drift_warn)
        threshold.labels("alert").set(drift_alert)
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = DeferredCounter(
            "grpc_server_started_total", "RPCs started on the server.", grpc_labels)
        self.grpc_handled = DeferredCounter(
            "grpc_server_handled_total", "RPCs completed on the server, by status code.",
            (*grpc_labels, "grpc_code"))
        self.grpc_seconds = DeferredHistogram(
            "grpc_server_handling_seconds", "Time from RPC start to its status, seconds.",
            grpc_labels, LATENCY_BUCKETS)
        self.grpc_received = DeferredCounter(
            "grpc_server_msg_received_total", "Messages received from clients.", grpc_labels)
        self.grpc_sent = DeferredCounter(
            "grpc_server_msg_sent_total", "Messages sent to clients.", grpc_labels)
        self.stage_seconds = DeferredHistogram(
            "sightline_request_duration_seconds", "Time per request in each serving stage.",
            ("model", "stage"), LATENCY_BUCKETS)
        self.predictions = DeferredCounter(
            "sightline_predictions_total", "Top-1 predictions by class.", ("model", "class"))
        self.confidence = DeferredHistogram(
            "sightline_prediction_confidence", "Top-1 probability of each prediction.",
            ("model",), tuple(np.round(np.arange(0.1, 1.01, 0.1), 1)))
        self.low_confidence_total = DeferredCounter(
            "sightline_low_confidence_predictions_total",
            f"Predictions whose top-1 probability is below {low_confidence}.", ("model",))
        self.input_bytes = DeferredHistogram(
            "sightline_input_bytes", "Encoded size of request images, bytes.", ("model",),
            tuple(1024 * 4**i for i in range(8)) + (16 * 1024 * 1024,))
        self.input_pixels = DeferredHistogram(
            "sightline_input_pixels", "Width x height of request images as sent.", ("model",),
            (1e3, 4e3, 1.6e4, 6.4e4, 2.5e5, 1e6, 4e6, 1.6e7, 4e7))
        self._requests: deque = deque()  # one tuple per finished request (``request_done``)
        self._rpcs_started: deque = deque()  # labels per started RPC
        self._rpcs: deque = deque()  # (labels, code, seconds, received, sent) per finished RPC
        self._batches: deque = deque()  # (model, size) per interpreter call
        self._fold_lock = threading.Lock()
        self.batch_size = DeferredHistogram(
            "sightline_batch_size", "Images per interpreter call.", ("model",),
            (1, 2, 4, 8, 16, 32, 64, 128))
        self.deferred = [self.grpc_started, self.grpc_handled, self.grpc_seconds,
                         self.grpc_received, self.grpc_sent, self.stage_seconds,
                         self.predictions, self.confidence, self.low_confidence_total,
                         self.input_bytes, self.input_pixels, self.batch_size]
        self.rejected = Counter(
            "sightline_requests_rejected_total", "Requests refused or dropped, by reason.",
            ["reason"], registry=r)
        self.loads = Counter(
            "sightline_model_loads_total", "Model version loads, by result.",
            ["model", "result"], registry=r)
        self.unloads = Counter(
            "sightline_model_unloads_total", "Model versions unloaded.", ["model"], registry=r)
        self.load_seconds = Histogram(
            "sightline_model_load_duration_seconds", "Time to load, verify and warm a version.",
            ["model"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.warmup_seconds = Gauge(
            "sightline_model_warmup_seconds", "Warm-up time of the last version loaded.",
            ["model"], registry=r)
        self.late = Counter(
            "sightline_late_results_total", "Results ready only after their request's "
            "deadline: work for clients that had left.", ["model"], registry=r)
        self.decode_failures = Counter(
            "sightline_decode_failures_total", "Requests whose input could not be used.",
            ["reason"], registry=r)
        for reason in DECODE_REASONS:
            self.decode_failures.labels(reason)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        self.known_models: set[str] = set()  # every model the repository tried to load

    # -- the Inference observer -----------------------------------------------------------

    def request_done(self, servable, result, pixels: np.ndarray, input_bytes: int | None,
                     input_pixels: int | None) -> None:
        """One append, no locks: ``fold`` turns the log into metrics when Prometheus scrapes."""
        t, top = result.timing, result.top_class
        self._requests.append((
            servable.name, servable.card.labels, top, float(result.probabilities[top]),
            t.decode_seconds, t.queue_seconds, t.inference_seconds,
            t.explain_seconds if result.heatmap is not None else NAN, t.total_seconds,
            NAN if input_bytes is None else input_bytes,
            NAN if input_pixels is None else input_pixels,
            servable.resources.get("drift"), result.brightness))
        if len(self._requests) > LIMIT:
            self.fold()

    def fold(self) -> None:
        """Fold the request and RPC logs into the metrics, with numpy, a model at a time."""
        with self._fold_lock:
            by_model: dict[tuple, list] = defaultdict(list)
            log = self._requests
            for _ in range(len(log)):
                row = log.popleft()
                by_model[row[0], id(row[1])].append(row)
            for rows in by_model.values():
                self._fold_model(rows)
            self._fold_rpcs()
            batches: dict[str, list[int]] = defaultdict(list)
            for _ in range(len(self._batches)):
                model, size = self._batches.popleft()
                batches[model].append(size)
            for model, sizes in batches.items():
                self.batch_size.add_many((model,), sizes)

    def _fold_model(self, rows: list[tuple]) -> None:
        model, labels = rows[0][0], rows[0][1]
        (_, _, top, confidence, decode, queue, inference, explain, total, size, pixels,
         monitors, lumas) = zip(*rows, strict=True)
        top, confidence = np.asarray(top), np.asarray(confidence)
        for stage, values in (("decode", decode), ("queue", queue), ("inference", inference),
                              ("explain", explain), ("total", total)):
            values = np.asarray(values)
            self.stage_seconds.add_many((model, stage), values[~np.isnan(values)])
        for index, count in enumerate(np.bincount(top, minlength=len(labels))):
            if count:
                self.predictions.add((model, labels[index]), int(count))
        self.confidence.add_many((model,), confidence)
        low = int((confidence < self.low_confidence).sum())
        if low:
            self.low_confidence_total.add((model,), low)
        for histogram, values in ((self.input_bytes, size), (self.input_pixels, pixels)):
            values = np.asarray(values, dtype=np.float64)
            histogram.add_many((model,), values[~np.isnan(values)])
        for monitor in {m for m in monitors if m is not None}:
            rows_of = [i for i, m in enumerate(monitors) if m is monitor and lumas[i] is not None]
            monitor.observe_batch(top[rows_of], confidence[rows_of],
                                  np.asarray([lumas[i] for i in rows_of]))

    def _fold_rpcs(self) -> None:
        started = self._rpcs_started
        for labels, count in collections.Counter(
                started.popleft() for _ in range(len(started))).items():
            self.grpc_started.add(labels, count)
        finished: dict[tuple, list] = defaultdict(list)
        log = self._rpcs
        for _ in range(len(log)):
            labels, *rest = log.popleft()
            finished[labels].append(rest)
        for labels, rows in finished.items():
            codes, seconds, received, sent = zip(*rows, strict=True)
            for code, count in collections.Counter(codes).items():
                self.grpc_handled.add((*labels, code), count)
            self.grpc_seconds.add_many(labels, np.asarray(seconds))
            self.grpc_received.add(labels, sum(received))
            self.grpc_sent.add(labels, sum(sent))

    def rpc_started(self, labels: tuple) -> None:
        self._rpcs_started.append(labels)
        if len(self._rpcs_started) > LIMIT:
            self.fold()

    def rpc_finished(self, labels: tuple, code: str, seconds: float, received: int,
                     sent: int) -> None:
        self._rpcs.append((labels, code, seconds, received, sent))
        if len(self._rpcs) > LIMIT:
            self.fold()

    def rejected_request(self, reason: str, error_type: str) -> None:
        """``reason``: the ServingError's reason; ``error_type``: its class name."""
        if reason in DECODE_REASONS:
            self.decode_failures.labels(reason).inc()
            self.rejected.labels("bad_input").inc()
        elif reason in REJECTION_REASONS:
            self.rejected.labels(reason).inc()
        elif error_type == "BadRequest":
            self.rejected.labels("bad_input").inc()
        elif error_type == "UnknownModel":
            self.rejected.labels("unknown_model").inc()

    def late_results(self, model: str, count: int) -> None:
        """Rare by design (the batcher skips what cannot finish in time): a plain counter."""
        self.late.labels(model).inc(count)

    def batch(self, model: str, size: int) -> None:
        self._batches.append((model, size))
        if len(self._batches) > LIMIT:
            self.fold()

    # -- the model manager's on_event hook ------------------------------------------------

    def model_event(self, event: str, name: str, version: int, details: dict) -> None:
        if name not in self.known_models:  # both results from 0, so increase() sees the first
            self.known_models.add(name)
            for result in ("success", "failure"):
                self.loads.labels(name, result)
            self.late.labels(name)
        if event == "loaded":
            self.loads.labels(name, "success").inc()
            self.load_seconds.labels(name).observe(details.get("seconds", 0.0))
            self.warmup_seconds.labels(name).set(details.get("warmup_seconds", 0.0))
        elif event == "load_failed":
            self.loads.labels(name, "failure").inc()
        elif event == "unloaded":
            self.unloads.labels(name).inc()

    def watch(self, manager, drift_of: Callable | None = None) -> None:
        """Report the served versions, their queues and drift at every scrape."""
        self.registry.register(_DeferredCollector(self.deferred, self.fold))
        self.registry.register(_StateCollector(manager, drift_of, self.known_models, self.fold))


class _DeferredCollector(Collector):
    def __init__(self, metrics, fold):
        self.metrics = metrics
        self.fold = fold

    def collect(self):
        self.fold()
        for metric in self.metrics:
            yield metric.collect()


class _StateCollector(Collector):
    def __init__(self, manager, drift_of, known_models: set[str], fold):
        self.manager = manager
        self.drift_of = drift_of
        self.known_models = known_models
        self.fold = fold  # drift monitors must see the logged requests before their snapshot

    def collect(self):
        info = GaugeMetricFamily("sightline_model_info", "Served model versions (value 1).",
                                 labels=["model", "version", "sha256", "variant"])
        loaded = GaugeMetricFamily("sightline_model_loaded", "Versions served per model.",
                                   labels=["model"])
        in_flight = GaugeMetricFamily("sightline_in_flight_requests", "Requests accepted and not "
                                      "yet answered (holding a model version).")
        holding = 0
        depth = GaugeMetricFamily("sightline_queue_depth", "Requests waiting for a batch.",
                                  labels=["model"])
        capacity = GaugeMetricFamily("sightline_queue_capacity", "Most requests that may wait.",
                                     labels=["model"])
        psi = GaugeMetricFamily("sightline_drift_psi", "Population stability index of live "
                                "traffic against the card's reference.", labels=["model", "signal"])
        ks = GaugeMetricFamily("sightline_drift_ks", "Kolmogorov-Smirnov statistic of live "
                               "traffic against the card's reference.", labels=["model", "signal"])
        window = GaugeMetricFamily("sightline_drift_window_size", "Requests in the drift window.",
                                   labels=["model"])
        self.fold()
        served = self.manager.models()
        for name in sorted(self.known_models - set(served)):  # tried, and nothing is served
            loaded.add_metric([name], 0)
        for name, versions in served.items():
            loaded.add_metric([name], len(versions))
            queued, room = 0, 0
            for version in versions:
                try:
                    servable = self.manager.get(name, version)
                except LookupError:  # unloaded between the two reads
                    continue
                card = servable.card
                holding += servable.holders
                info.add_metric([name, str(version), card.files["model.tflite"]["sha256"],
                                 card.quantization.get("primary", "")], 1)
                batcher = servable.resources.get("batcher")
                if batcher is not None:
                    queued += batcher.queue_depth
                    room += batcher.capacity
            depth.add_metric([name], queued)
            capacity.add_metric([name], room)
            drift = self.drift_of(name) if self.drift_of is not None else None
            if drift is not None:
                psi.add_metric([name, "class_mix"], drift["class_mix_psi"])
                psi.add_metric([name, "brightness"], drift["brightness_psi"])
                ks.add_metric([name, "confidence"], drift["confidence_ks"])
                window.add_metric([name], drift["window_size"])
        in_flight.add_metric([], holding)
        yield from (info, loaded, in_flight, depth, capacity, psi, ks, window)


class GrpcMetricsInterceptor(grpc.ServerInterceptor):
    """RED metrics for every RPC, named as py-grpc-prometheus names them."""

    def __init__(self, metrics: ServingMetrics):
        self.m = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # wrapped once per method

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:  # unknown methods stay uncached: clients choose their names
            wrapped = self._wrap(continuation(handler_call_details), method)
            if wrapped is not None:
                self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler, method_path: str):
        if handler is None:
            return None
        service, _, method = method_path.lstrip("/").rpartition("/")
        if handler.request_streaming and handler.response_streaming:
            kind, wrap, factory = ("bidi_stream", self._streaming,
                                   grpc.stream_stream_rpc_method_handler)
            behavior = handler.stream_stream
        elif not handler.request_streaming and not handler.response_streaming:
            kind, wrap, factory = ("unary", self._unary, grpc.unary_unary_rpc_method_handler)
            behavior = handler.unary_unary
        else:  # Sightline has no half-streaming methods; count them without wrapping
            return handler
        labels = (kind, service, method)
        return factory(wrap(behavior, labels), handler.request_deserializer,
                       handler.response_serializer)

    def _finish(self, labels, context, started, received, sent, code=None):
        code = code or context.code() or grpc.StatusCode.OK
        self.m.rpc_finished(labels, code.name, time.perf_counter() - started, received, sent)

    def _unary(self, behavior, labels):
        def wrapped(request, context):
            started = time.perf_counter()
            self.m.rpc_started(labels)
            try:
                response = behavior(request, context)
            except BaseException:
                self._finish(labels, context, started, 1, 0,
                             context.code() or grpc.StatusCode.UNKNOWN)
                raise
            self._finish(labels, context, started, 1, 1)
            return response

        return wrapped

    def _streaming(self, behavior, labels):
        def wrapped(request_iterator, context):
            started = time.perf_counter()
            self.m.rpc_started(labels)
            received = [0]

            def counted():
                for request in request_iterator:
                    received[0] += 1
                    yield request

            sent = 0
            try:
                for response in behavior(counted(), context):
                    sent += 1
                    yield response
            except GeneratorExit:  # the client went away mid-stream
                self._finish(labels, context, started, received[0], sent,
                             grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._finish(labels, context, started, received[0], sent,
                             context.code() or grpc.StatusCode.UNKNOWN)
                raise
            self._finish(labels, context, started, received[0], sent)

        return wrapped
