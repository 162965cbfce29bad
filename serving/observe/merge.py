"""One server's metrics from several processes: what ``--processes N`` exports on its one /metrics.

Each worker process counts what it did in its own registry and serves it on a loopback port;
the supervisor reads them all at each scrape and merges them here, so a scrape shows the whole
server and equals the sum of what each process did:
- counters, histograms (buckets, sums and counts) and summaries are summed, label set by label
  set; a ``_created`` sample keeps the earliest;
- gauges that count something held (requests in flight, queued, queue room, window sizes)
  are summed; ``sightline_model_loaded`` takes the smallest (a process serving nothing must
  show, and its alert fire); the other gauges (info, states, shares, thresholds, warm-up,
  drift) take the largest, which for values every process shares is that value;
- the process's own families (``process_*``, ``python_*``) are not merged: each sample gains
  ``process="<index>"``, so memory and CPU read per process, and a PromQL ``sum`` gives the
  total.
The merge is a pure function of the expositions, tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["PER_PROCESS_PREFIXES", "SUMMED_GAUGES", "merge"]

SUMMED_GAUGES = frozenset({"sightline_in_flight_requests", "sightline_queue_depth",
                           "sightline_queue_capacity", "sightline_drift_window_size"})
SMALLEST_GAUGES = frozenset({"sightline_model_loaded"})
PER_PROCESS_PREFIXES = ("process_", "python_")
PROCESS_LABEL = "process"


def merge(expositions: Sequence[tuple[str, str]]) -> list[Metric]:
    """``[(process, text exposition), ...]`` -> the merged metric families, in first-seen order."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for process, text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                values[family.name] = {}
            combine = _combiner(family)
            found = values[family.name]
            for sample in family.samples:
                labels = sample.labels
                if family.name.startswith(PER_PROCESS_PREFIXES):
                    labels = {**labels, PROCESS_LABEL: process}
                key = (sample.name, tuple(sorted(labels.items())))
                found[key] = sample.value if key not in found else combine(
                    sample.name, found[key], sample.value)
    for name, merged in families.items():
        merged.samples = [Sample(sample_name, dict(labels), value)
                          for (sample_name, labels), value in values[name].items()]
    return list(families.values())


def _combiner(family: Metric):
    if family.name.endswith("_created"):  # the text format gives creation times as gauges
        return lambda _, a, b: min(a, b)
    if family.type == "gauge":
        if family.name in SUMMED_GAUGES:
            return lambda _, a, b: a + b
        return (lambda _, a, b: min(a, b)) if family.name in SMALLEST_GAUGES else (
            lambda _, a, b: max(a, b))
    return lambda sample, a, b: min(a, b) if sample.endswith("_created") else a + b


class MergedCollector:
    """A prometheus_client collector: ``read()`` -> [(process, exposition), ...] at each scrape."""

    def __init__(self, read):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return merge(self.read())
