"""Statistics for comparing a candidate model with the baseline: pure functions of counts and
samples.

What it is: the Wilson interval of an accuracy; the fixed-horizon two-proportion z-test and the
per-arm sample size it needs; an always-valid sequential test of the same difference (mSPRT
with a normal mixture, Johari et al., "Always valid inference"); the Mann-Whitney comparison of
latency samples (or of two latency histograms); and the sample-ratio-mismatch (SRM) check of
the split itself.

Who calls it: ``routing.decide`` on every decision, offline analysis and the simulations in
tests/serving/routing/. Arm "a" is the baseline and arm "b" the candidate throughout, and every
difference is candidate minus baseline.

What it guarantees:
- No state and no I/O: the same arguments give the same answer in any process, so counts
  summed across replicas (or read from Prometheus) are tested exactly like local ones.
- The proportion tests broadcast over numpy arrays, so a simulation of thousands of
  experiments calls the code under test once rather than a copy of it in a loop; scalar
  arguments give a float back.
- ``msprt_p_value`` is valid at every look: checked after each observation, for as long as
  one likes, the chance that it ever falls to ``alpha`` under no difference is at most
  ``alpha`` (the fixed-horizon z-test's p-value does not have that property; peeking at it
  inflates false positives).
- Degenerate counts (an empty arm, every outcome identical) are "no evidence": p = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["DEFAULT_MIXING_VARIANCE", "SRM_THRESHOLD", "LatencyComparison", "compare_latency",
           "min_sample_size", "msprt_likelihood_ratio", "msprt_p_value", "msprt_p_value_path",
           "sample_ratio_p_value", "slower_p_value", "slower_p_value_binned", "srm_detected",
           "two_proportion_z_test", "wilson_interval"]

# The normal mixture's variance over the true difference in accuracy: a standard deviation of 3
# points weighs the 1-6 point changes a new model version plausibly makes. Smaller values detect
# small differences sooner and large ones later; the test is valid for any value.
DEFAULT_MIXING_VARIANCE = 0.03**2
SRM_THRESHOLD = 0.001  # GrowthBook's: an SRM alarm should almost never be a false one


def _float_if_scalar(values):
    array = np.asarray(values, dtype=float)
    return float(array) if array.ndim == 0 else array


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion: unlike the normal (Wald) interval it stays
    inside [0, 1] and keeps its coverage near 0 and 1, where a good model's accuracy lives."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    z = scipy_stats.norm.ppf(0.5 + confidence / 2)
    p_hat = successes / n
    shrink = 1 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / shrink
    half_width = z / shrink * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def _pooled_variance_of_difference(successes_a, n_a, successes_b, n_b):
    """Var(p_b - p_a) under "no difference", from the pooled proportion; 0 where undefined."""
    successes_a, n_a, successes_b, n_b = (np.asarray(x, dtype=float)
                                          for x in (successes_a, n_a, successes_b, n_b))
    total = n_a + n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = np.where(total > 0, (successes_a + successes_b) / total, 0.0)
        inverse_sizes = np.where((n_a > 0) & (n_b > 0), 1 / n_a + 1 / n_b, 0.0)
        difference = np.where((n_a > 0) & (n_b > 0), successes_b / n_b - successes_a / n_a, 0.0)
    return difference, pooled * (1 - pooled) * inverse_sizes


def two_proportion_z_test(successes_a, n_a, successes_b, n_b) -> tuple:
    """(z, two-sided p) for p_b - p_a with the pooled standard error: valid only when looked
    at once, at a sample size fixed in advance (``min_sample_size``)."""
    difference, variance = _pooled_variance_of_difference(successes_a, n_a, successes_b, n_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(variance > 0, difference / np.sqrt(variance), 0.0)
    p_value = 2 * scipy_stats.norm.sf(np.abs(z))
    return _float_if_scalar(z), _float_if_scalar(p_value)


def min_sample_size(p_baseline: float, minimum_detectable_effect: float, alpha: float = 0.05,
                    power: float = 0.8) -> int:
    """Per-arm sample size for the two-sided two-proportion z-test to detect the candidate at
    ``p_baseline + minimum_detectable_effect`` (negative for a drop) with the given power.

    The normal-approximation formula without continuity correction (Fleiss): the pooled
    variance under the null, each arm's own variance under the alternative."""
    p_candidate = p_baseline + minimum_detectable_effect
    if not (0 < p_baseline < 1 and 0 < p_candidate < 1):
        raise ValueError(f"need 0 < p_baseline, p_baseline + effect < 1; got {p_baseline!r}, "
                         f"{p_candidate!r}")
    if minimum_detectable_effect == 0:
        raise ValueError("minimum_detectable_effect must be non-zero")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha!r}, {power!r}")
    z_alpha = scipy_stats.norm.ppf(1 - alpha / 2)
    z_power = scipy_stats.norm.ppf(power)
    p_mean = (p_baseline + p_candidate) / 2
    null_spread = z_alpha * math.sqrt(2 * p_mean * (1 - p_mean))
    alternative_spread = z_power * math.sqrt(p_baseline * (1 - p_baseline)
                                             + p_candidate * (1 - p_candidate))
    return math.ceil((null_spread + alternative_spread) ** 2 / minimum_detectable_effect**2)


def _log_mixture_likelihood_ratio(successes_a, n_a, successes_b, n_b, mixing_variance):
    """log Lambda for the observed difference d ~ N(theta, V), theta ~ N(0, tau^2) against
    theta = 0: 0.5 log(V / (V + tau^2)) + tau^2 d^2 / (2 V (V + tau^2)).

    V is a plug-in estimate (the pooled variance, as under the null); with equal arms of n it
    is 2 sigma^2 / n and this is Johari et al.'s Lambda_n. 0 (no evidence) where V is 0."""
    if mixing_variance <= 0:
        raise ValueError(f"mixing_variance must be > 0, got {mixing_variance!r}")
    difference, variance = _pooled_variance_of_difference(successes_a, n_a, successes_b, n_b)
    spread = variance + mixing_variance
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = (0.5 * np.log(variance / spread)
                     + mixing_variance * difference**2 / (2 * variance * spread))
    return np.where(variance > 0, log_ratio, 0.0)


def msprt_likelihood_ratio(successes_a, n_a, successes_b, n_b,
                           mixing_variance: float = DEFAULT_MIXING_VARIANCE):
    """The mixture likelihood ratio Lambda: evidence for "some difference" over "none"."""
    with np.errstate(over="ignore"):
        return _float_if_scalar(np.exp(_log_mixture_likelihood_ratio(
            successes_a, n_a, successes_b, n_b, mixing_variance)))


def msprt_p_value(successes_a, n_a, successes_b, n_b,
                  mixing_variance: float = DEFAULT_MIXING_VARIANCE, previous_p_value=1.0):
    """The always-valid p-value after this look: min(previous, 1 / Lambda, 1).

    Pass the previous look's value to carry the running minimum forward; a caller that stops
    at the first rejection (as ``decide`` does, its verdicts being terminal) may leave it at 1,
    since the first look with 1 / Lambda <= alpha is the same look either way."""
    log_ratio = _log_mixture_likelihood_ratio(successes_a, n_a, successes_b, n_b,
                                              mixing_variance)
    return _float_if_scalar(np.minimum(np.minimum(previous_p_value, np.exp(-log_ratio)), 1.0))


def msprt_p_value_path(successes_a, n_a, successes_b, n_b,
                       mixing_variance: float = DEFAULT_MIXING_VARIANCE) -> np.ndarray:
    """Always-valid p-values along the last axis of cumulative counts (one column per look):
    the running minimum of min(1, 1 / Lambda)."""
    at_each_look = msprt_p_value(successes_a, n_a, successes_b, n_b, mixing_variance)
    return np.minimum.accumulate(np.atleast_1d(at_each_look), axis=-1)


@dataclass(frozen=True)
class LatencyComparison:
    p_value: float  # Mann-Whitney U, two-sided: do the two latency distributions differ?
    baseline_median_seconds: float
    candidate_median_seconds: float


def compare_latency(baseline_seconds, candidate_seconds) -> LatencyComparison:
    """Mann-Whitney U on raw latency samples: rank-based, so the long right tail that latency
    always has neither breaks the test nor dominates it, as it would a t-test."""
    baseline = np.asarray(baseline_seconds, dtype=float)
    candidate = np.asarray(candidate_seconds, dtype=float)
    if baseline.size == 0 or candidate.size == 0:
        raise ValueError("both latency samples must be non-empty")
    result = scipy_stats.mannwhitneyu(candidate, baseline, alternative="two-sided")
    return LatencyComparison(float(result.pvalue), float(np.median(baseline)),
                             float(np.median(candidate)))


def slower_p_value(baseline_seconds, candidate_seconds) -> float:
    """One-sided Mann-Whitney p that the candidate's latencies tend to exceed the baseline's;
    1.0 when either sample is empty (no evidence)."""
    baseline = np.asarray(baseline_seconds, dtype=float)
    candidate = np.asarray(candidate_seconds, dtype=float)
    if baseline.size == 0 or candidate.size == 0:
        return 1.0
    return float(scipy_stats.mannwhitneyu(candidate, baseline, alternative="greater").pvalue)


def slower_p_value_binned(baseline_counts, candidate_counts) -> float:
    """``slower_p_value`` from two histograms over the same ordered bins (Prometheus buckets,
    de-cumulated): Mann-Whitney's U with every value in a bin tied, the normal approximation
    with the tie correction and a continuity correction. 1.0 when either arm is empty."""
    baseline = np.asarray(baseline_counts, dtype=float)
    candidate = np.asarray(candidate_counts, dtype=float)
    if baseline.shape != candidate.shape or np.any(baseline < 0) or np.any(candidate < 0):
        raise ValueError(f"need two non-negative histograms over the same bins; got "
                         f"{baseline.tolist()} and {candidate.tolist()}")
    n_b, n_c = baseline.sum(), candidate.sum()
    if n_b == 0 or n_c == 0:
        return 1.0
    below = np.cumsum(baseline) - baseline  # baseline values in lower bins
    u = float(np.sum(candidate * (below + baseline / 2)))  # pairs where the candidate is slower
    n = n_b + n_c
    ties = baseline + candidate
    variance = n_b * n_c / 12 * ((n + 1) - np.sum(ties**3 - ties) / (n * (n - 1)))
    if variance <= 0:  # every value in one bin: no evidence either way
        return 1.0
    z = (u - n_b * n_c / 2 - 0.5) / math.sqrt(variance)
    return float(scipy_stats.norm.sf(z))


def sample_ratio_p_value(observed_counts, weights):
    """Chi-square goodness of fit of per-variant request counts (last axis) to the configured
    weights: a small p means the split itself is broken (a router bug, a crashing arm, a
    client that retries on one arm), and no comparison of the arms can be trusted."""
    observed = np.asarray(observed_counts, dtype=float)
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 1 or observed.shape[-1] != weights.size or np.any(weights <= 0):
        raise ValueError(f"need one positive weight per variant, got {weights.tolist()} for "
                         f"counts of shape {observed.shape}")
    totals = observed.sum(axis=-1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError("no requests to check the split of")
    expected = totals * weights / weights.sum()
    return _float_if_scalar(scipy_stats.chisquare(observed, expected, axis=-1).pvalue)


def srm_detected(p_value: float, threshold: float = SRM_THRESHOLD) -> bool:
    """True when the split is mismatched beyond chance at ``threshold``."""
    return p_value < threshold
