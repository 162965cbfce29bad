"""What Prometheus reads at each scrape: the folded request logs, the state of every served
version (which versions, their queues, requests in flight, drift), and the A/B experiments.

State is read when it is scraped, so it is never stale. Drift is exported for every served
version, from the monitor the version's batch workers feed (``inference.runner``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from serving.card import MODEL_FILE
from serving.routing.decide import State
from serving.routing.router import LATENCY_BUCKETS
from serving.routing.stats import msprt_p_value

__all__ = ["DeferredCollector", "ExperimentsCollector", "StateCollector", "WINDOW_COUNTS"]

WINDOW_COUNTS = "sightline_drift_window_count"


class DeferredCollector(Collector):
    """The deferred counters and histograms, after folding the logs into them."""

    def __init__(self, metrics: Iterable, fold: Callable[[], None]):
        self.metrics = list(metrics)
        self.fold = fold

    def collect(self):
        self.fold()
        for metric in self.metrics:
            yield metric.collect()


class StateCollector(Collector):
    def __init__(self, manager, known_models: set[str], window_counts: bool = False):
        self.manager = manager
        self.known_models = known_models  # every model the repository tried to load
        self.window_counts = window_counts  # one process of several: export the drift windows

    def collect(self):
        info = GaugeMetricFamily("sightline_model_info", "Served model versions (value 1).",
                                 labels=["model", "version", "sha256", "variant"])
        loaded = GaugeMetricFamily("sightline_model_loaded", "Versions served per model.",
                                   labels=["model"])
        in_flight = GaugeMetricFamily("sightline_in_flight_requests", "Requests accepted and not "
                                      "yet answered (holding a model version).")
        depth = GaugeMetricFamily("sightline_queue_depth", "Requests waiting for a batch.",
                                  labels=["model", "version"])
        capacity = GaugeMetricFamily("sightline_queue_capacity", "Most requests that may wait.",
                                     labels=["model", "version"])
        psi = GaugeMetricFamily("sightline_drift_psi", "Population stability index of live "
                                "traffic against the card's reference.",
                                labels=["model", "version", "signal"])
        ks = GaugeMetricFamily("sightline_drift_ks", "Kolmogorov-Smirnov statistic of live "
                               "traffic against the card's reference.",
                               labels=["model", "version", "signal"])
        window = GaugeMetricFamily("sightline_drift_window_size", "Requests in the drift window.",
                                   labels=["model", "version"])
        bins = GaugeMetricFamily(WINDOW_COUNTS, "Drift window counts per bin, for the "
                                 "supervisor of several processes (observe.merge).",
                                 labels=["model", "version", "signal", "bin"])
        holding = 0
        served = self.manager.models()
        for name in sorted(self.known_models - set(served)):  # tried, and nothing is served
            loaded.add_metric([name], 0)
        for name, versions in served.items():
            loaded.add_metric([name], len(versions))
            for version in versions:
                try:
                    servable = self.manager.get(name, version)
                except LookupError:  # unloaded between the two reads
                    continue
                labels, card = [name, str(version)], servable.card
                holding += servable.holders
                info.add_metric([*labels, card.files[MODEL_FILE].sha256,
                                 card.quantization.primary if card.quantization else ""], 1)
                batcher, drift = servable.batcher, servable.drift
                if batcher is not None:
                    depth.add_metric(labels, batcher.queue_depth)
                    capacity.add_metric(labels, batcher.capacity)
                if drift is not None:
                    snapshot = drift.snapshot()
                    psi.add_metric([*labels, "class_mix"], snapshot["class_mix_psi"])
                    psi.add_metric([*labels, "brightness"], snapshot["brightness_psi"])
                    ks.add_metric([*labels, "confidence"], snapshot["confidence_ks"])
                    window.add_metric(labels, snapshot["window_size"])
                    if self.window_counts:
                        for signal, counts in drift.counts().items():
                            for index, count in enumerate(counts):
                                bins.add_metric([*labels, signal, str(index)], count)
        in_flight.add_metric([], holding)
        yield from (info, loaded, in_flight, depth, capacity, psi, ks, window)
        if self.window_counts:
            yield bins


class ExperimentsCollector(Collector):
    """The A/B router's counts and decisions (``sightline_ab_*``), read at scrape time.

    Counters are totals since the process started, summed over canary steps, so ``rate()``
    and sums across replicas work; the sequential p-value is that of the counts the router
    judges now (the current step's)."""

    def __init__(self, router):
        self.router = router

    def collect(self):
        labels = ["experiment", "variant"]
        families = {name: CounterMetricFamily(f"sightline_ab_{name}", text, labels=labels)
                    for name, text in (
                        ("requests", "Requests an experiment routed, by the variant answering."),
                        ("errors", "Routed requests that failed on the server's side."),
                        ("feedback", "Late labels counted (SendFeedback)."),
                        ("correct", "Late labels that matched the variant's prediction."))}
        share = GaugeMetricFamily("sightline_ab_candidate_share", "The candidate's share of "
                                  "the experiment's traffic now.", labels=["experiment"])
        state = GaugeMetricFamily("sightline_ab_state", "1 for the experiment's current state.",
                                  labels=["experiment", "state"])
        p_value = GaugeMetricFamily("sightline_ab_sequential_p_value", "Always-valid (mSPRT) "
                                    "p-value of the accuracy difference.",
                                    labels=["experiment"])
        decisions = CounterMetricFamily("sightline_ab_decisions_total", "Decisions that "
                                        "changed an experiment, by the state they set.",
                                        labels=["experiment", "state"])
        shadow = {name: CounterMetricFamily(f"sightline_ab_shadow_{name}", text,
                                            labels=["experiment"])
                  for name, text in (("mirrored", "Shadow copies the candidate answered."),
                                     ("dropped", "Shadow copies not run (queue full, or the "
                                      "candidate not there)."),
                                     ("agreed", "Shadow copies with the baseline's top-1."),
                                     ("explained", "Shadow copies with both variants' maps."))}
        means = {name: GaugeMetricFamily(f"sightline_ab_shadow_{name}", text,
                                         labels=["experiment"])
                 for name, text in (("map_correlation", "Mean Pearson correlation of the two "
                                     "variants' Grad-CAM maps."),
                                    ("top_region_overlap", "Mean IoU of the two maps' top "
                                     "20% regions."))}
        for name, totals in sorted(self.router.shadow_totals().items()):
            for field, family in shadow.items():
                family.add_metric([name], getattr(totals, field))
            if totals.explained:
                means["map_correlation"].add_metric(
                    [name], totals.map_correlation_sum / totals.explained)
                means["top_region_overlap"].add_metric(
                    [name], totals.top_region_overlap_sum / totals.explained)
        latency = HistogramMetricFamily("sightline_ab_latency_seconds", "Latency of the routed "
                                        "requests that succeeded, by the variant answering.",
                                        labels=labels)
        bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
        for (name, variant), totals in sorted(self.router.totals().items()):
            for field, family in families.items():
                family.add_metric([name, variant.value], getattr(totals, field))
            cumulative, running = [], 0
            for bound, count in zip(bounds, totals.latency_counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([name, variant.value], cumulative, totals.latency_sum)
        decided = dict(self.router.decisions)
        for name in sorted(self.router.experiments()):
            current = self.router.state(name)
            share.add_metric([name], current.candidate_share)
            for each in State:
                state.add_metric([name, each.value], float(each is current.state))
                decisions.add_metric([name, each.value], decided.get((name, each.value), 0))
            baseline, candidate = self.router.counts(name)
            p_value.add_metric([name], msprt_p_value(baseline.correct, baseline.feedback,
                                                     candidate.correct, candidate.feedback))
        yield from (*families.values(), latency, share, state, p_value, decisions,
                    *shadow.values(), *means.values())
