"""Counts summed over a fleet, from Prometheus' answers: rounding, clipping, p99 and the
binned latency test against their reference implementations."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from serving.routing.experiment import parse_experiments
from serving.routing.fleet import COUNTERS, LATENCY, bucket_quantile, fleet_counts, queries
from serving.routing.stats import slower_p_value_binned

BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, math.inf)


def sample(value, **labels):
    return {"metric": labels, "value": [1_800_000_000.0, str(value)]}


def buckets(variant, seconds):
    """The cumulative bucket samples of ``seconds`` for one variant."""
    cumulative = np.searchsorted(np.sort(seconds), BOUNDS, side="right")
    return [sample(count, variant=variant, le="+Inf" if math.isinf(b) else str(b))
            for b, count in zip(BOUNDS, cumulative, strict=True)]


def test_the_queries_sum_each_counter_by_variant_over_the_window():
    experiment = parse_experiments({"experiments": [{
        "name": "pets-next", "model": "pets", "baseline": {"version": 1},
        "candidate": {"version": 2}, "mode": "split"}]})["pets-next"]
    found = queries(experiment, 90.2)
    assert set(found) == {*COUNTERS, LATENCY}
    assert found["requests"] == ('sum by (variant) (increase(sightline_ab_requests_total'
                                 '{experiment="pets-next"}[91s]))')
    assert "sum by (variant, le)" in found[LATENCY] and "[91s]" in found[LATENCY]
    assert queries(experiment, 0.0)["errors"].endswith("[1s]))")


def test_counts_are_rounded_clipped_and_an_absent_arm_is_zero():
    answers = {"requests": [sample(100.4, variant="baseline"), sample(49.6, variant="candidate")],
               "errors": [sample(3.2, variant="candidate")],
               "feedback": [sample(80.0, variant="baseline"), sample(40.0, variant="candidate")],
               "correct": [sample(80.7, variant="baseline"), sample("NaN", variant="candidate")]}
    baseline, candidate = fleet_counts(answers)
    assert (baseline.requests, baseline.errors, baseline.feedback, baseline.correct) == (
        100, 0, 80, 80)  # 81 correct answers of 80 labels: extrapolation, clipped
    assert (candidate.requests, candidate.errors, candidate.feedback, candidate.correct) == (
        50, 3, 40, 0)
    assert math.isnan(baseline.latency_p99_seconds) and candidate.slower_p_value == 1.0
    empty = fleet_counts({})
    assert empty[0].requests == empty[1].requests == 0


def test_bucket_quantile_is_prometheus_histogram_quantile():
    # 100 observations: 50 up to 10 ms, 40 more up to 20 ms, 10 more up to 40 ms.
    cumulative = [(0.01, 50.0), (0.02, 90.0), (0.04, 100.0), (math.inf, 100.0)]
    assert bucket_quantile(0.5, cumulative) == pytest.approx(0.01)
    assert bucket_quantile(0.7, cumulative) == pytest.approx(0.015)
    assert bucket_quantile(0.99, cumulative) == pytest.approx(0.038)
    assert bucket_quantile(0.99, [(0.01, 1.0), (math.inf, 100.0)]) == 0.01  # in +Inf: the bound
    assert math.isnan(bucket_quantile(0.99, [(0.01, 0.0), (math.inf, 0.0)]))


def test_the_binned_latency_test_equals_scipy_on_binned_samples():
    rng = np.random.default_rng(3)
    for shift, slower in ((1.0, False), (1.3, True)):
        baseline = rng.lognormal(math.log(0.004), 0.5, 800)
        candidate = rng.lognormal(math.log(0.004 * shift), 0.5, 600)
        bins_b, bins_c = np.searchsorted(BOUNDS, baseline), np.searchsorted(BOUNDS, candidate)
        histogram = [np.bincount(b, minlength=len(BOUNDS)) for b in (bins_b, bins_c)]
        p = slower_p_value_binned(*histogram)
        exact = scipy_stats.mannwhitneyu(bins_c, bins_b, alternative="greater").pvalue
        assert p == pytest.approx(exact, rel=1e-9)
        assert (p < 1e-6) is slower
        _, candidate_counts = fleet_counts({
            "requests": [sample(800, variant="baseline"), sample(600, variant="candidate")],
            LATENCY: buckets("baseline", baseline) + buckets("candidate", candidate)})
        assert candidate_counts.slower_p_value == pytest.approx(p, rel=1e-9)
        p99 = bucket_quantile(0.99, list(zip(BOUNDS, np.searchsorted(
            np.sort(candidate), BOUNDS, side="right").astype(float), strict=True)))
        assert candidate_counts.latency_p99_seconds == pytest.approx(p99)
    assert slower_p_value_binned([0, 5, 0], [0, 7, 0]) == 1.0  # one bin: no evidence
    assert slower_p_value_binned([0, 0], [1, 2]) == 1.0
    with pytest.raises(ValueError, match="same bins"):
        slower_p_value_binned([1, 2], [1, 2, 3])
