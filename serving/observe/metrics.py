"""Prometheus metrics: the definitions (``monitoring/METRICS.md`` is the contract), the logs
the hot path appends to, and their folding into counters and histograms at scrape time.

The registry is passed in, so each test builds a fresh one. Metrics wrap the data path rather
than live in it: ``ServingMetrics`` implements the data plane's ``Observer`` hooks
(``inference.observer``) and the model manager's ``on_event`` hook; ``observe.interceptor``
counts every RPC; ``observe.collectors`` reads state (served versions, queues, drift) at each
scrape. Label values are bounded: ``model``, ``version`` and ``class`` only ever take values
from loaded model cards, never from requests. Request metrics carry the model version, so two
versions (an A/B pair) can be compared side by side.
"""

from __future__ import annotations

import collections
import threading
from collections import defaultdict, deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.image.decode import REASONS as DECODE_REASONS
from serving.observe.collectors import DeferredCollector, ExperimentsCollector, StateCollector
from serving.observe.deferred import DeferredCounter, DeferredHistogram
from serving.routing.router import LATENCY_BUCKETS

__all__ = ["ServingMetrics", "SLO_SECONDS"]

NAN = float("nan")
LIMIT = 50_000  # log entries before a writer folds them itself: bounded memory without scrapes
SLO_SECONDS = 0.1  # the latency SLO: a bucket boundary in every latency histogram
# One set of bounds for every latency histogram, the A/B router's per-variant one included
# (the routing room keeps it, since it may not import this one).
assert SLO_SECONDS in LATENCY_BUCKETS
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
            ("model", "version", "stage"), LATENCY_BUCKETS)
        self.predictions = DeferredCounter(
            "sightline_predictions_total", "Top-1 predictions by class.",
            ("model", "version", "class"))
        self.confidence = DeferredHistogram(
            "sightline_prediction_confidence", "Top-1 probability of each prediction.",
            ("model", "version"), tuple(np.round(np.arange(0.1, 1.01, 0.1), 1)))
        self.low_confidence_total = DeferredCounter(
            "sightline_low_confidence_predictions_total",
            f"Predictions whose top-1 probability is below {low_confidence}.",
            ("model", "version"))
        self.input_bytes = DeferredHistogram(
            "sightline_input_bytes", "Encoded size of request images, bytes.",
            ("model", "version"),
            tuple(1024 * 4**i for i in range(8)))  # 1 KiB to 16 MiB, decode's default limit
        self.input_pixels = DeferredHistogram(
            "sightline_input_pixels", "Width x height of request images as sent.",
            ("model", "version"),
            (1e3, 4e3, 1.6e4, 6.4e4, 2.5e5, 1e6, 4e6, 1.6e7, 4e7))
        self._requests: deque = deque()  # one tuple per finished request (``request_done``)
        self._rpcs_started: deque = deque()  # labels per started RPC
        self._rpcs: deque = deque()  # (labels, code, seconds, received, sent) per finished RPC
        self._batches: deque = deque()  # (model, version, size) per interpreter call
        self._fold_lock = threading.Lock()
        self.batch_size = DeferredHistogram(
            "sightline_batch_size", "Images per interpreter call.", ("model", "version"),
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
            "deadline: work for clients that had left.", ["model", "version"], registry=r)
        self.decode_failures = Counter(
            "sightline_decode_failures_total", "Requests whose input could not be used.",
            ["reason"], registry=r)
        for reason in DECODE_REASONS:
            self.decode_failures.labels(reason)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        self.known_models: set[str] = set()  # every model the repository tried to load

    # -- the Inference observer -----------------------------------------------------------

    def request_done(self, result, labels: list[str], input_bytes: int | None,
                     input_pixels: int | None) -> None:
        """One append, no locks: ``fold`` turns the log into metrics when Prometheus scrapes."""
        t, top = result.timing, result.top_class
        self._requests.append((
            result.model_name, str(result.model_version), labels, top,
            float(result.probabilities[top]), t.decode_seconds, t.queue_seconds,
            t.inference_seconds, t.explain_seconds if result.heatmap is not None else NAN,
            t.total_seconds, NAN if input_bytes is None else input_bytes,
            NAN if input_pixels is None else input_pixels))
        if len(self._requests) > LIMIT:
            self.fold()

    def fold(self) -> None:
        """Fold the request and RPC logs into the metrics, with numpy, a version at a time."""
        with self._fold_lock:
            by_version: dict[tuple, list] = defaultdict(list)
            log = self._requests
            for _ in range(len(log)):
                row = log.popleft()
                by_version[row[0], row[1]].append(row)
            for rows in by_version.values():
                self._fold_version(rows)
            self._fold_rpcs()
            batches: dict[tuple[str, str], list[int]] = defaultdict(list)
            for _ in range(len(self._batches)):
                model, version, size = self._batches.popleft()
                batches[model, version].append(size)
            for labels, sizes in batches.items():
                self.batch_size.add_many(labels, sizes)

    def _fold_version(self, rows: list[tuple]) -> None:
        model, version, labels = rows[0][0], rows[0][1], rows[0][2]
        (_, _, _, top, confidence, decode, queue, inference, explain, total, size,
         pixels) = zip(*rows, strict=True)
        top, confidence = np.asarray(top), np.asarray(confidence)
        for stage, values in (("decode", decode), ("queue", queue), ("inference", inference),
                              ("explain", explain), ("total", total)):
            values = np.asarray(values)
            self.stage_seconds.add_many((model, version, stage), values[~np.isnan(values)])
        for index, count in enumerate(np.bincount(top, minlength=len(labels))):
            if count:
                self.predictions.add((model, version, labels[index]), int(count))
        self.confidence.add_many((model, version), confidence)
        low = int((confidence < self.low_confidence).sum())
        if low:
            self.low_confidence_total.add((model, version), low)
        for histogram, values in ((self.input_bytes, size), (self.input_pixels, pixels)):
            values = np.asarray(values, dtype=np.float64)
            histogram.add_many((model, version), values[~np.isnan(values)])

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

    def late_results(self, model: str, version: int, count: int) -> None:
        """Rare by design (the batcher skips what cannot finish in time): a plain counter."""
        self.late.labels(model, str(version)).inc(count)

    def batch(self, model: str, version: int, size: int) -> None:
        self._batches.append((model, str(version), size))
        if len(self._batches) > LIMIT:
            self.fold()

    # -- the model manager's on_event hook ------------------------------------------------

    def model_event(self, event: str, name: str, version: int, details: dict) -> None:
        if name not in self.known_models:  # both results from 0, so increase() sees the first
            self.known_models.add(name)
            for result in ("success", "failure"):
                self.loads.labels(name, result)
        if event == "loaded":
            self.late.labels(name, str(version))  # from 0, so increase() sees the first
            self.loads.labels(name, "success").inc()
            self.load_seconds.labels(name).observe(details.get("seconds", 0.0))
            self.warmup_seconds.labels(name).set(details.get("warmup_seconds", 0.0))
        elif event == "load_failed":
            self.loads.labels(name, "failure").inc()
        elif event == "unloaded":
            self.unloads.labels(name).inc()

    def watch(self, manager, router=None, window_counts: bool = False) -> None:
        """Report the served versions, their queues, drift and experiments at every scrape;
        ``window_counts``: the drift windows' counts too, for a supervisor to sum."""
        self.registry.register(DeferredCollector(self.deferred, self.fold))
        self.registry.register(StateCollector(manager, self.known_models, window_counts))
        if router is not None:
            self.registry.register(ExperimentsCollector(router))
