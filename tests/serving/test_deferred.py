"""Deferred counters and histograms expose exactly what prometheus-client's would."""

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from serving import deferred
from serving.deferred import DeferredCounter, DeferredHistogram

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
        fast_histogram.observe((model,), float(value))
        counter.labels(model, str(i % 4)).inc()
        fast_counter.inc((model, str(i % 4)))
        if i == 100:
            fast_histogram.fold()  # folding part-way changes nothing
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
    monkeypatch.setattr(deferred, "LIMIT", 10)
    counter = DeferredCounter("c_total", "doc", ("x",))
    for _ in range(25):
        counter.inc(("a",))
    assert len(counter._pending) <= 10


def test_concurrent_writers_lose_nothing():
    histogram = DeferredHistogram("h", "doc", ("x",), BUCKETS)

    def write():
        for _ in range(20_000):
            histogram.observe(("a",), 0.05)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        histogram.fold()  # scrapes racing the writers
    for thread in threads:
        thread.join()
    family = histogram.collect()
    count = next(s.value for s in family.samples if s.name == "h_count")
    assert count == 80_000
