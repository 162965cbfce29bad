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
  total;
- drift (``with_drift_of_all``): each process's PSI and KS describe only its share of the
  traffic, so they are computed again from the processes' drift windows summed bin by bin
  (``sightline_drift_window_count``, which the workers export for this and which is not passed
  on) against the version's reference.
The merge is a pure function of the expositions, tested on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from serving.card import ReferenceStats
from serving.observe.collectors import WINDOW_COUNTS
from serving.observe.drift import drift_statistics

__all__ = ["PER_PROCESS_PREFIXES", "SUMMED_GAUGES", "MergedCollector", "merge", "with_drift_of_all"]

SUMMED_GAUGES = frozenset({"sightline_in_flight_requests", "sightline_queue_depth",
                           "sightline_queue_capacity", "sightline_drift_window_size",
                           WINDOW_COUNTS})
# (family, its signal label) -> drift_statistics' key
DRIFT_FIGURES = {("sightline_drift_psi", "class_mix"): "class_mix_psi",
                 ("sightline_drift_psi", "brightness"): "brightness_psi",
                 ("sightline_drift_ks", "confidence"): "confidence_ks"}
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


def with_drift_of_all(families: list[Metric],
                      reference_for: Callable[[str, str], ReferenceStats | None],
                      min_samples: int) -> list[Metric]:
    """The merged families with PSI and KS of the summed drift windows; a version whose
    reference ``reference_for(model, version)`` cannot give keeps the largest of its
    processes' figures."""
    windows: dict[tuple[str, str], dict[str, dict[int, float]]] = {}
    for family in families:
        if family.name == WINDOW_COUNTS:
            for sample in family.samples:
                labels = sample.labels
                windows.setdefault((labels["model"], labels["version"]), {}).setdefault(
                    labels["signal"], {})[int(labels["bin"])] = sample.value
    figures = {}
    for (model, version), signals in windows.items():
        reference = reference_for(model, version)
        if reference is not None:
            counts = {signal: [bins[i] for i in sorted(bins)] for signal, bins in signals.items()}
            figures[model, version] = drift_statistics(reference, counts, min_samples)
    kept = []
    for family in families:
        if family.name == WINDOW_COUNTS:
            continue
        for index, sample in enumerate(family.samples):
            key = DRIFT_FIGURES.get((family.name, sample.labels.get("signal")))
            found = figures.get((sample.labels.get("model"), sample.labels.get("version")))
            if key is not None and found is not None:
                family.samples[index] = sample._replace(value=float(found[key]))
        kept.append(family)
    return kept


class MergedCollector:
    """A prometheus_client collector: ``read()`` -> [(process, exposition), ...] at each
    scrape, merged, then passed through ``finish`` (e.g. ``with_drift_of_all``)."""

    def __init__(self, read, finish: Callable[[list[Metric]], list[Metric]] | None = None):
        self.read = read
        self.finish = finish

    def collect(self) -> Iterable[Metric]:
        merged = merge(self.read())
        return merged if self.finish is None else self.finish(merged)
