"""An experiment's per-arm counts summed over a fleet of servers, read from Prometheus.

What it is: ``queries(experiment, window_seconds)`` gives the PromQL that sums every server's
``sightline_ab_*`` counters and latency histogram over the window by variant, and
``fleet_counts(results)`` turns the answers into the two ``decide.VariantCounts`` that
``decide.decide`` judges, exactly as one server judges its own counts. ``bucket_quantile`` is
Prometheus' ``histogram_quantile`` over the same buckets.

Who calls it: ``routing.controller`` (``sightline-ab controller``), once per experiment per tick,
with the window that began at the experiment's last decision (a canary step or a new share is
judged on its own traffic, as on one server).

What it guarantees:
- No I/O: the caller runs the queries, so tests feed answers of a real Prometheus or made-up
  ones alike.
- ``increase()`` survives a server restart (a counter reset) and sums pods that came and went.
  It extrapolates to the window's edges, so counts are rounded, clipped so that errors never
  exceed requests nor correct answers labels, and an arm with no series counts zero.
- The p99 and the one-sided Mann-Whitney p that the candidate is slower come from the same
  bucket counts (``stats.slower_p_value_binned``): resolution is the buckets', which the
  guardrail's ratio (1.2 by default, bounds about 2x apart) is coarser than only near a bound.
"""

from __future__ import annotations

import math

from serving.routing.assignment import Variant
from serving.routing.decide import VariantCounts
from serving.routing.experiment import Experiment
from serving.routing.stats import slower_p_value_binned

__all__ = ["COUNTERS", "bucket_quantile", "fleet_counts", "queries"]

COUNTERS = ("requests", "errors", "feedback", "correct")  # sightline_ab_<name>_total
LATENCY = "latency"  # the key of the histogram's query


def queries(experiment: Experiment, window_seconds: float) -> dict[str, str]:
    """{what: PromQL}: each counter and the latency buckets, summed by variant over the fleet.
    Experiment names match ``NAME_PATTERN``, so they need no escaping in a label matcher."""
    window = f"{max(1, math.ceil(window_seconds))}s"
    where = f'experiment="{experiment.name}"'
    found = {name: f"sum by (variant) (increase(sightline_ab_{name}_total{{{where}}}[{window}]))"
             for name in COUNTERS}
    found[LATENCY] = (f"sum by (variant, le) (increase(sightline_ab_latency_seconds_bucket"
                      f"{{{where}}}[{window}]))")
    return found


def bucket_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """``histogram_quantile(q, ...)`` over (upper bound, cumulative count) pairs, +Inf last:
    linear within the bucket that holds the rank; NaN with no observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0 or not math.isinf(buckets[-1][0]):
        return math.nan
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):  # above the highest finite bound: that bound, as Prometheus
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _by_variant(vector: list[dict]) -> dict[str, float]:
    values = {}
    for sample in vector:
        value = float(sample["value"][1])
        values[sample["metric"].get("variant", "")] = 0.0 if math.isnan(value) else value
    return values


def _histograms(vector: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """variant -> cumulative buckets, each count made monotone (extrapolation may wobble)."""
    found: dict[str, list[tuple[float, float]]] = {}
    for sample in vector:
        labels = sample["metric"]
        value = float(sample["value"][1])
        found.setdefault(labels.get("variant", ""), []).append(
            (float(labels["le"]), 0.0 if math.isnan(value) else value))
    for variant, buckets in found.items():
        buckets.sort()
        highest, monotone = 0.0, []
        for bound, count in buckets:
            highest = max(highest, count)
            monotone.append((bound, highest))
        found[variant] = monotone
    return found


def _per_bucket(buckets: list[tuple[float, float]], bounds: list[float]) -> list[float]:
    cumulative = dict(buckets)
    counts, below = [], 0.0
    for bound in bounds:
        total = cumulative.get(bound, below)
        counts.append(max(0.0, total - below))
        below = max(below, total)
    return counts


def fleet_counts(results: dict[str, list[dict]]) -> tuple[VariantCounts, VariantCounts]:
    """(baseline, candidate) from the answers (Prometheus' instant-vector ``result`` lists)
    to ``queries``."""
    totals = {name: _by_variant(results.get(name, [])) for name in COUNTERS}
    histograms = _histograms(results.get(LATENCY, []))
    bounds = sorted({bound for buckets in histograms.values() for bound, _ in buckets})
    binned = {v: _per_bucket(histograms.get(v.value, []), bounds) for v in Variant}
    arms = {}
    for variant in Variant:
        count = {name: max(0, round(totals[name].get(variant.value, 0.0))) for name in COUNTERS}
        requests, feedback = count["requests"], count["feedback"]
        p99 = bucket_quantile(0.99, histograms.get(variant.value, []))
        slower = (1.0 if variant is Variant.BASELINE or not bounds else
                  slower_p_value_binned(binned[Variant.BASELINE], binned[Variant.CANDIDATE]))
        arms[variant] = VariantCounts(
            requests, feedback, min(count["correct"], feedback),
            min(count["errors"], requests), p99 if p99 > 0 else math.nan, slower)
    return arms[Variant.BASELINE], arms[Variant.CANDIDATE]
