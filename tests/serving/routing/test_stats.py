"""The statistics against independent references: scipy's own implementations, numerical
integration of the mixture, and textbook values."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as scipy_stats

from serving.routing.stats import (
    compare_latency,
    min_sample_size,
    msprt_likelihood_ratio,
    msprt_p_value,
    msprt_p_value_path,
    sample_ratio_p_value,
    srm_detected,
    two_proportion_z_test,
    wilson_interval,
)


@pytest.mark.parametrize(("successes", "n", "confidence"),
                         [(81, 100, 0.95), (0, 20, 0.95), (20, 20, 0.99), (950, 1000, 0.9)])
def test_wilson_matches_scipy(successes, n, confidence):
    reference = scipy_stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
    assert wilson_interval(successes, n, confidence) == pytest.approx(
        (reference.low, reference.high), abs=1e-12)


def test_wilson_stays_inside_zero_and_one_and_is_vacuous_without_data():
    low, high = wilson_interval(20, 20)
    assert 0.8 < low < high == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_the_z_test_squared_is_the_uncorrected_chi_square():
    table = np.array([[800, 200], [830, 170]])  # rows: baseline, candidate; cols: right, wrong
    chi2, p_value, _, _ = scipy_stats.chi2_contingency(table, correction=False)
    z, p = two_proportion_z_test(800, 1000, 830, 1000)
    assert z > 0  # candidate minus baseline
    assert z * z == pytest.approx(chi2)
    assert p == pytest.approx(p_value)


def test_the_z_test_broadcasts_and_treats_no_variance_as_no_evidence():
    z, p = two_proportion_z_test(np.array([10, 0]), 10, np.array([10, 0]), 10)
    assert z.tolist() == [0.0, 0.0] and p.tolist() == [1.0, 1.0]


def test_min_sample_size_is_the_textbook_value():
    # (1.95996 sqrt(2 * .825 * .175) + 0.84162 sqrt(.8 * .2 + .85 * .15))^2 / .05^2 = 905.4
    assert min_sample_size(0.80, 0.05, 0.05, 0.8) == 906
    assert min_sample_size(0.80, -0.05) > 906  # a drop to 0.75 has more variance
    assert min_sample_size(0.80, 0.05, power=0.9) > 906
    assert min_sample_size(0.80, 0.025) > 3.5 * 906  # about four times for half the effect


@pytest.mark.parametrize("arguments", [(0.8, 0.0), (0.98, 0.05), (0.0, 0.1), (0.8, 0.05, 1.2)])
def test_min_sample_size_refuses_nonsense(arguments):
    with pytest.raises(ValueError):
        min_sample_size(*arguments)


@pytest.mark.parametrize(("counts", "tau2"), [((800, 1000, 760, 1000), 0.03**2),
                                               ((4000, 5000, 4100, 5000), 0.01**2),
                                               ((90, 100, 80, 120), 0.1**2)])
def test_the_likelihood_ratio_is_the_normal_mixture_integral(counts, tau2):
    """Lambda = integral of N(d; theta, V) N(theta; 0, tau^2) dtheta / N(d; 0, V)."""
    successes_a, n_a, successes_b, n_b = counts
    d = successes_b / n_b - successes_a / n_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    v = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    tau = math.sqrt(tau2)
    mixture, _ = integrate.quad(
        lambda theta: scipy_stats.norm.pdf(d, theta, math.sqrt(v))
        * scipy_stats.norm.pdf(theta, 0, tau), -20 * tau, 20 * tau, points=[0.0, d])
    expected = mixture / scipy_stats.norm.pdf(d, 0, math.sqrt(v))
    assert msprt_likelihood_ratio(*counts, mixing_variance=tau2) == pytest.approx(expected,
                                                                                  rel=1e-6)


def test_msprt_p_value_is_one_over_lambda_capped_and_carries_the_minimum():
    strong = (800, 1000, 720, 1000)
    assert msprt_p_value(*strong) == pytest.approx(1 / msprt_likelihood_ratio(*strong))
    assert msprt_p_value(800, 1000, 800, 1000) == 1.0  # no difference: Lambda < 1
    assert msprt_p_value(800, 1000, 800, 1000, previous_p_value=0.2) == 0.2
    assert msprt_p_value(0, 0, 5, 10) == 1.0 and msprt_p_value(10, 10, 10, 10) == 1.0


def test_msprt_p_value_path_never_rises():
    n = np.arange(1, 6) * 1000
    a = np.array([800, 1590, 2400, 3210, 4000])
    b = np.array([700, 1450, 2300, 3200, 4010])  # a big early gap that closes
    path = msprt_p_value_path(a, n, b, n)
    at_each_look = msprt_p_value(a, n, b, n)
    assert at_each_look[-1] > at_each_look[0]  # the evidence itself fades...
    assert np.all(np.diff(path) <= 0) and path[-1] == at_each_look.min()  # ...p does not


def test_latency_comparison_reports_medians_and_separates_a_shift():
    rng = np.random.default_rng(7)
    baseline = rng.lognormal(np.log(0.02), 0.5, 2_000)
    slower = rng.lognormal(np.log(0.024), 0.5, 2_000)
    same = rng.lognormal(np.log(0.02), 0.5, 2_000)
    shifted = compare_latency(baseline, slower)
    assert shifted.p_value < 1e-6
    assert shifted.baseline_median_seconds == pytest.approx(np.median(baseline))
    assert shifted.candidate_median_seconds == pytest.approx(np.median(slower))
    assert compare_latency(baseline, same).p_value > 0.01
    with pytest.raises(ValueError):
        compare_latency([], [0.1])


def test_srm_is_the_chi_square_against_the_configured_weights():
    assert sample_ratio_p_value([9_000, 1_000], [0.9, 0.1]) == pytest.approx(1.0)
    expected = scipy_stats.chi2.sf((5_100 - 5_000) ** 2 / 5_000 * 2, df=1)
    assert sample_ratio_p_value([5_100, 4_900], [1, 1]) == pytest.approx(expected)
    assert srm_detected(0.0009) and not srm_detected(0.001)
    assert srm_detected(0.04, threshold=0.05)
    for observed, weights in (([10, 0], [1, 1, 1]), ([0, 0], [1, 1]), ([5, 5], [1, 0])):
        with pytest.raises(ValueError):
            sample_ratio_p_value(observed, weights)
