"""What Prometheus reads at each scrape: the folded request logs, and the state of every
served version (which versions, their queues, requests in flight, drift).

State is read when it is scraped, so it is never stale. Drift is exported for every served
version, from the monitor the version's batch workers feed (``inference.runner``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.card import MODEL_FILE

__all__ = ["DeferredCollector", "StateCollector"]


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
    def __init__(self, manager, known_models: set[str]):
        self.manager = manager
        self.known_models = known_models  # every model the repository tried to load

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
        in_flight.add_metric([], holding)
        yield from (info, loaded, in_flight, depth, capacity, psi, ks, window)
