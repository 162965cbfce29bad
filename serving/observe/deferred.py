"""Counters and histograms filled in bulk, for the per-request metrics.

prometheus-client's metrics take a lock per update; a request makes about a dozen updates, and
under the GIL contention of a busy server that cost 12-18% of throughput (docs/benchmarks.md).
So ``ServingMetrics`` only appends one tuple per request to a log, and when Prometheus scrapes
it folds the log into these: ``add`` a count, or ``add_many`` values binned with numpy at once.
``collect`` yields the same counter and histogram families prometheus-client would.
"""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

__all__ = ["DeferredCounter", "DeferredHistogram"]


class DeferredCounter:
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._totals: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def add(self, labels: tuple, amount: float) -> None:
        with self._lock:
            self._totals[labels] = self._totals.get(labels, 0.0) + amount

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            for labels, total in sorted(self._totals.items()):
                family.add_metric(labels, total)
        return family


class DeferredHistogram:
    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...]):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = np.asarray(buckets, dtype=np.float64)  # upper bounds, +Inf implied
        self._counts: dict[tuple, np.ndarray] = {}  # per bucket, not cumulative; last is +Inf
        self._sums: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def add_many(self, labels: tuple, values) -> None:
        """Observe every value of ``values`` under ``labels``."""
        values = np.asarray(values, dtype=np.float64)
        if not len(values):
            return
        # Bucket i counts bounds[i-1] < v <= bounds[i], as Prometheus's `le` means.
        counts = np.bincount(np.searchsorted(self.bounds, values, side="left"),
                             minlength=len(self.bounds) + 1)
        with self._lock:
            if labels in self._counts:
                self._counts[labels] += counts
                self._sums[labels] += float(values.sum())
            else:
                self._counts[labels] = counts
                self._sums[labels] = float(values.sum())

    def collect(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [floatToGoString(float(b)) for b in self.bounds] + ["+Inf"]
        with self._lock:
            for labels in sorted(self._counts):
                cumulative = np.cumsum(self._counts[labels])
                family.add_metric(labels, list(zip(edges, cumulative.tolist(), strict=True)),
                                  self._sums[labels])
        return family
