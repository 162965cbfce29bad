"""Counters and histograms for the per-request hot path, folded in bulk at scrape time.

prometheus-client's metrics take a lock per update; a request makes about a dozen updates, and
under the GIL contention of a busy server that cost ~15% of throughput (docs/benchmarks.md).
Here an update is one ``deque.append`` (atomic in CPython, no lock); ``fold`` drains the queue
and bins the values with numpy when Prometheus scrapes, or when the queue grows past ``LIMIT``,
so memory stays bounded when nobody scrapes. The exposition is the same as prometheus-client's:
``collect`` yields ordinary counter and histogram families.
"""

from __future__ import annotations

import threading
from collections import defaultdict, deque

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["DeferredCounter", "DeferredHistogram", "LIMIT"]

LIMIT = 50_000  # pending updates before a writer folds them itself


class _Deferred:
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...]):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._pending: deque = deque()
        self._fold_lock = threading.Lock()

    def _append(self, item) -> None:
        self._pending.append(item)
        if len(self._pending) > LIMIT:
            self.fold()

    def _drain(self) -> list:
        items, pending = [], self._pending
        for _ in range(len(pending)):  # what is there now; later appends wait for the next fold
            items.append(pending.popleft())
        return items


class DeferredCounter(_Deferred):
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()):
        super().__init__(name, documentation, labelnames)
        self._totals: dict[tuple, float] = {}

    def inc(self, labels: tuple = (), amount: float = 1.0) -> None:
        self._append((labels, amount))

    def add(self, labels: tuple, amount: float) -> None:
        """Add at once (a bulk fold of already aggregated values), not deferred."""
        with self._fold_lock:
            self._totals[labels] = self._totals.get(labels, 0.0) + amount

    def touch(self, labels: tuple) -> None:
        """Export ``labels`` at 0 before its first increment."""
        with self._fold_lock:
            self._totals.setdefault(labels, 0.0)

    def fold(self) -> None:
        with self._fold_lock:
            for labels, amount in self._drain():
                self._totals[labels] = self._totals.get(labels, 0.0) + amount

    def collect(self) -> CounterMetricFamily:
        self.fold()
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._fold_lock:
            for labels, total in sorted(self._totals.items()):
                family.add_metric(labels, total)
        return family


class DeferredHistogram(_Deferred):
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...]):
        super().__init__(name, documentation, labelnames)
        self.bounds = np.asarray(buckets, dtype=np.float64)  # upper bounds, +Inf implied
        self._counts: dict[tuple, np.ndarray] = {}  # per bucket, not cumulative; last is +Inf
        self._sums: dict[tuple, float] = {}

    def observe(self, labels: tuple, value: float) -> None:
        self._append((labels, value))

    def fold(self) -> None:
        with self._fold_lock:
            grouped: dict[tuple, list[float]] = defaultdict(list)
            for labels, value in self._drain():
                grouped[labels].append(value)
            for labels, values in grouped.items():
                self._add_many(labels, np.asarray(values, dtype=np.float64))

    def add_many(self, labels: tuple, values: np.ndarray) -> None:
        """Observe many values at once (a bulk fold), not deferred."""
        with self._fold_lock:
            self._add_many(labels, np.asarray(values, dtype=np.float64))

    def _add_many(self, labels: tuple, values: np.ndarray) -> None:
        if not len(values):
            return
        # Bucket i counts bounds[i-1] < v <= bounds[i], as Prometheus's `le` means.
        index = np.searchsorted(self.bounds, values, side="left")
        counts = np.bincount(index, minlength=len(self.bounds) + 1)
        if labels in self._counts:
            self._counts[labels] += counts
            self._sums[labels] += float(values.sum())
        else:
            self._counts[labels] = counts
            self._sums[labels] = float(values.sum())

    def collect(self) -> HistogramMetricFamily:
        self.fold()
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [_le(b) for b in self.bounds] + ["+Inf"]
        with self._fold_lock:
            for labels in sorted(self._counts):
                cumulative = np.cumsum(self._counts[labels])
                family.add_metric(labels, list(zip(edges, cumulative.tolist(), strict=True)),
                                  self._sums[labels])
        return family


def _le(bound: float) -> str:
    """A bucket bound spelled as prometheus-client spells it (Go's float format)."""
    return floatToGoString(float(bound))
