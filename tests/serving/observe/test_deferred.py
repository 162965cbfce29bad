"""Bulk-filled counters and histograms expose exactly what prometheus-client's would, and the
metrics log they are filled from neither grows without bound nor loses an entry."""

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from serving.observe import metrics
from serving.observe.deferred import DeferredCounter, DeferredHistogram
from serving.observe.metrics import ServingMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


class Expose(Collector):
    def __init__(self, *metrics):
        self.metrics = metrics

    def collect(self):
        for metric in self.metrics:
            yield metric.collect()


def exposition(*metrics) -> bytes:
    registry = CollectorRegistry()
    registry.register(Expose(*metrics))
    return generate_latest(registry)


def test_same_exposition_as_prometheus_client():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.exponential(0.05, 500), list(BUCKETS), [0.0, 20.0]])
    reference = CollectorRegistry()
    histogram = Histogram("t_seconds", "doc", ["model"], buckets=BUCKETS, registry=reference)
    counter = Counter("t_total", "doc", ["model", "class"], registry=reference)
    fast_histogram = DeferredHistogram("t_seconds", "doc", ("model",), BUCKETS)
    fast_counter = DeferredCounter("t_total", "doc", ("model", "class"))
    for i, value in enumerate(values):
        model = "a" if i % 3 else "b"
        histogram.labels(model).observe(value)
        counter.labels(model, str(i % 4)).inc()
        fast_counter.add((model, str(i % 4)), 1)
    for model, rows in (("a", [i for i in range(len(values)) if i % 3]),
                        ("b", [i for i in range(len(values)) if not i % 3])):
        fast_histogram.add_many((model,), values[rows][:100])  # in two parts: sums add up
        fast_histogram.add_many((model,), values[rows][100:])
    got, want = parse(exposition(fast_histogram, fast_counter)), parse(generate_latest(reference))
    assert got.keys() == want.keys()
    for key, value in want.items():  # sums may differ in the last bit: another addition order
        assert got[key] == pytest.approx(value, rel=1e-12), key


def parse(text: bytes) -> dict:
    """{(family type, sample name, labels): value}, without prometheus-client's *_created."""
    return {(family.type, s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples if not s.name.endswith("_created")}


def test_writers_fold_when_nobody_scrapes(monkeypatch):
    monkeypatch.setattr(metrics, "LIMIT", 10)
    log = ServingMetrics()
    for _ in range(25):
        log.rpc_started(("unary", "s", "m"))
    waiting = len(log._rpcs_started)
    folded = [s.value for s in log.grpc_started.collect().samples if s.name.endswith("_total")]
    assert waiting <= 10  # the log stays bounded without a scrape...
    assert folded == [25 - waiting]  # ...because the writers folded it: nothing was dropped
    log.fold()
    assert [s.value for s in log.grpc_started.collect().samples
            if s.name.endswith("_total")] == [25]


def test_concurrent_writers_lose_nothing():
    log = ServingMetrics()
    histogram = log.grpc_seconds

    def write():
        for _ in range(20_000):
            log.rpc_finished(("unary", "s", "m"), "OK", 0.05, 1, 1)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        log.fold()  # scrapes racing the writers
    for thread in threads:
        thread.join()
    log.fold()
    family = histogram.collect()
    count = next(s.value for s in family.samples if s.name == "grpc_server_handling_seconds_count")
    assert count == 80_000
