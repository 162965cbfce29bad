"""The experiment's decision: what the candidate's share of traffic should be next, and why.

What it is: ``decide(state, step_index, step_started_at, now, baseline, candidate, config)``, a
pure function of per-arm counts (``VariantCounts``) and the experiment's ``ExperimentConfig``,
returning a ``Decision``. Three modes: ``split`` (a fixed weighted A/B split), ``shadow`` (the
candidate sees a mirrored copy of every request and answers none) and ``canary`` (the candidate's
share climbs through ``CanaryStep``s).

Who calls it: whatever holds the experiment, on a timer: in one process over local counters,
over counts summed across processes, or fleet-wide over counts read from Prometheus. It keeps
the state, step index and step start time the last ``Decision`` implies; in canary mode the
counts are those since ``step_started_at``, so it starts new counters when a decision moves the
step on (the SRM check compares them with that one step's share). ``step_started_at`` and
``now`` are seconds on the caller's clock; ``decide`` reads none. ``candidate_share`` is the
fraction of live traffic the candidate answers: always 0 in shadow mode and once stopped.

What it guarantees, in this order of precedence:
1. A terminal state (rolled back, halted, promotable) is returned unchanged.
2. Halt (share 0) on a sample-ratio mismatch once both arms together have ``min_requests``
   requests: with a broken split no comparison is trusted, and an arm that gets nothing halts.
3. No other verdict before each arm has ``min_requests`` requests: low traffic never aborts.
4. Roll back (share 0) when the candidate's error rate exceeds the baseline's by more than
   ``max_error_rate_increase``, its latency p99 exceeds ``max_latency_p99_ratio`` times the
   baseline's while its latencies are significantly slower (Mann-Whitney at ``alpha``), or,
   once each arm has ``min_feedback`` labelled outcomes, the always-valid sequential test finds
   its accuracy worse at ``alpha``.
5. A favourable verdict needs every guardrail measured (feedback and p99 present): split and
   shadow become promotable when the candidate is better at ``alpha``; a canary advances only
   once the step has ``min_samples`` requests per arm and ``min_seconds`` elapsed, and is
   promotable after its last step. Promotion itself is someone else's act.
Every ``Decision`` names the number that decided it in ``reason``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from serving.routing.stats import (
    DEFAULT_MIXING_VARIANCE,
    SRM_THRESHOLD,
    msprt_p_value,
    sample_ratio_p_value,
    srm_detected,
)

__all__ = ["CanaryStep", "Decision", "ExperimentConfig", "Guardrails", "Mode", "State",
           "VariantCounts", "decide"]


class Mode(enum.StrEnum):
    SPLIT = "split"
    SHADOW = "shadow"
    CANARY = "canary"


class State(enum.StrEnum):
    RUNNING = "running"
    PROMOTABLE = "promotable"  # the evidence is in; the share holds until someone promotes
    ROLLED_BACK = "rolled_back"
    HALTED_SRM = "halted_srm"

    @property
    def terminal(self) -> bool:
        return self is not State.RUNNING


@dataclass(frozen=True)
class VariantCounts:
    """One arm's totals over the window being judged. p99 is NaN until it is known."""

    requests: int
    feedback: int  # requests whose true label came back
    correct: int  # of those, how many the arm classified correctly
    errors: int  # requests that failed (counted in ``requests``)
    latency_p99_seconds: float
    # One-sided Mann-Whitney p that this arm's latencies exceed the baseline's (the caller
    # computes it from samples, ``stats.compare_latency``); 1.0: no evidence.
    slower_p_value: float = 1.0

    def __post_init__(self) -> None:
        if min(self.requests, self.feedback, self.correct, self.errors) < 0:
            raise ValueError(f"counts must be >= 0: {self}")
        if self.correct > self.feedback or self.errors > self.requests:
            raise ValueError(f"need correct <= feedback and errors <= requests: {self}")
        if not (math.isnan(self.latency_p99_seconds) or self.latency_p99_seconds > 0):
            raise ValueError(f"latency_p99_seconds must be > 0 or NaN: {self}")

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def accuracy(self) -> float:
        return self.correct / self.feedback if self.feedback else math.nan


@dataclass(frozen=True)
class Guardrails:
    min_feedback: int = 500  # labelled outcomes per arm, before the accuracy test counts
    max_error_rate_increase: float = 0.01  # absolute: candidate minus baseline error rate
    max_latency_p99_ratio: float = 1.2  # candidate p99 over baseline p99
    alpha: float = 0.05  # of the always-valid accuracy test, in each direction
    min_requests: int = 1_000  # per arm, before any verdict
    mixing_variance: float = DEFAULT_MIXING_VARIANCE  # the mSPRT's tau^2

    def __post_init__(self) -> None:
        if self.min_requests < 1 or self.min_feedback < 0:
            raise ValueError(f"need min_requests >= 1 and min_feedback >= 0: {self}")
        if self.max_error_rate_increase < 0 or self.max_latency_p99_ratio < 1:
            raise ValueError(f"need max_error_rate_increase >= 0, max_latency_p99_ratio >= 1: "
                             f"{self}")
        if not (0 < self.alpha < 1 and self.mixing_variance > 0):
            raise ValueError(f"need 0 < alpha < 1 and mixing_variance > 0: {self}")


@dataclass(frozen=True)
class CanaryStep:
    share: float  # the candidate's fraction of live traffic during this step, in (0, 1)
    min_samples: int = 1_000  # requests per arm in this step before it may advance
    min_seconds: float = 300.0  # time in this step before it may advance

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"a canary step's share must be in (0, 1): promotion takes the "
                             f"last step, got {self.share!r}")
        if self.min_samples < 0 or self.min_seconds < 0:
            raise ValueError(f"need min_samples >= 0 and min_seconds >= 0: {self}")


@dataclass(frozen=True)
class ExperimentConfig:
    mode: Mode
    weights: tuple[float, float] = (0.5, 0.5)  # split mode: (baseline, candidate)
    steps: tuple[CanaryStep, ...] = ()  # canary mode: increasing shares
    guardrails: Guardrails = Guardrails()
    srm_threshold: float = SRM_THRESHOLD

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.mode is Mode.SPLIT and (len(self.weights) != 2 or min(self.weights) <= 0):
            raise ValueError(f"split needs two positive weights, got {self.weights!r}")
        shares = [step.share for step in self.steps]
        if self.mode is Mode.CANARY and (not shares or shares != sorted(set(shares))):
            raise ValueError(f"canary needs steps with strictly increasing shares, got {shares}")
        if not 0 < self.srm_threshold < 1:
            raise ValueError(f"srm_threshold must be in (0, 1), got {self.srm_threshold!r}")

    def candidate_share(self, step_index: int) -> float:
        """The fraction of live traffic the candidate answers while running."""
        if self.mode is Mode.CANARY:
            if not 0 <= step_index < len(self.steps):
                raise ValueError(f"step_index {step_index} outside 0..{len(self.steps) - 1}")
            return self.steps[step_index].share
        if self.mode is Mode.SPLIT:
            return self.weights[1] / sum(self.weights)
        return 0.0

    def expected_split(self, step_index: int) -> tuple[float, float]:
        """(baseline, candidate) request weights: shadow mirrors every request, so 1:1."""
        if self.mode is Mode.SHADOW:
            return 1.0, 1.0
        share = self.candidate_share(step_index)
        return 1.0 - share, share


@dataclass(frozen=True)
class Decision:
    state: State
    candidate_share: float
    step_index: int
    reason: str


def _share_text(share: float) -> str:
    return f"{share * 100:g}%"


def decide(state: State, step_index: int, step_started_at: float, now: float,
           baseline: VariantCounts, candidate: VariantCounts,
           config: ExperimentConfig, share_in_effect: float | None = None) -> Decision:
    """The next state and share from these counts; reads no clock and keeps nothing.
    ``share_in_effect`` is the share the counts were taken at when an operator set one; the
    split is checked against it (the config's share otherwise)."""
    state = State(state)
    share = config.candidate_share(step_index)
    guard = config.guardrails

    def verdict(new_state: State, reason: str, *, new_share: float = share,
                new_step: int = step_index) -> Decision:
        return Decision(new_state, new_share, new_step, reason)

    if state.terminal:
        held = share if state is State.PROMOTABLE else 0.0
        return verdict(state, f"{state.value} is terminal: the experiment has ended",
                       new_share=held)

    # The split is judged on the total, so an arm that gets nothing (a candidate that never
    # loads) halts the experiment instead of waiting for it forever.
    total = baseline.requests + candidate.requests
    expected = (config.expected_split(step_index) if share_in_effect is None
                or config.mode is Mode.SHADOW else (1.0 - share_in_effect, share_in_effect))
    # Shadow copies are dropped when the candidate falls behind, by design: no split to check.
    if total >= guard.min_requests and config.mode is not Mode.SHADOW:
        srm_p = sample_ratio_p_value([baseline.requests, candidate.requests], expected)
        if srm_detected(srm_p, config.srm_threshold):
            return verdict(State.HALTED_SRM, f"sample ratio mismatch: baseline "
                           f"{baseline.requests} vs candidate {candidate.requests} requests "
                           f"where the candidate should have "
                           f"{_share_text(expected[1] / sum(expected))}, chi-square "
                           f"p={srm_p:.3g} < {config.srm_threshold:g}", new_share=0.0)

    fewest = min(baseline.requests, candidate.requests)
    if fewest < guard.min_requests:
        return verdict(State.RUNNING, f"waiting: {fewest} requests on the smaller arm < "
                                      f"min_requests {guard.min_requests}")

    error_increase = candidate.error_rate - baseline.error_rate
    if error_increase > guard.max_error_rate_increase:
        return verdict(State.ROLLED_BACK, f"error rate {candidate.error_rate:.4f} vs baseline "
                       f"{baseline.error_rate:.4f}: +{error_increase:.4f} > "
                       f"max_error_rate_increase {guard.max_error_rate_increase:g}",
                       new_share=0.0)

    # A p99 from a few hundred samples is noisy (one GC pause moves it), so a high ratio rolls
    # back only when the candidate's latencies are also significantly slower as a whole.
    latency_ratio = candidate.latency_p99_seconds / baseline.latency_p99_seconds
    if latency_ratio > guard.max_latency_p99_ratio and candidate.slower_p_value <= guard.alpha:
        return verdict(State.ROLLED_BACK, f"latency p99 {candidate.latency_p99_seconds:.4g} s "
                       f"vs baseline {baseline.latency_p99_seconds:.4g} s: ratio "
                       f"{latency_ratio:.3f} > max_latency_p99_ratio "
                       f"{guard.max_latency_p99_ratio:g}, and slower overall (Mann-Whitney "
                       f"p={candidate.slower_p_value:.3g})", new_share=0.0)

    fewest_feedback = min(baseline.feedback, candidate.feedback)
    if fewest_feedback < guard.min_feedback:
        return verdict(State.RUNNING, f"waiting: {fewest_feedback} labelled outcomes on the "
                                      f"smaller arm < min_feedback {guard.min_feedback}")
    if math.isnan(latency_ratio):
        return verdict(State.RUNNING, "waiting: latency p99 not yet known for both arms")

    accuracy_p = msprt_p_value(baseline.correct, baseline.feedback, candidate.correct,
                               candidate.feedback, guard.mixing_variance)
    difference = candidate.accuracy - baseline.accuracy
    accuracy_text = (f"accuracy {candidate.accuracy:.4f} vs baseline {baseline.accuracy:.4f} "
                     f"({difference:+.4f}), always-valid p={accuracy_p:.3g}")
    if difference < 0 and accuracy_p <= guard.alpha:
        return verdict(State.ROLLED_BACK, f"{accuracy_text} <= alpha {guard.alpha:g}: "
                                          f"candidate worse", new_share=0.0)

    if config.mode is not Mode.CANARY:
        if difference > 0 and accuracy_p <= guard.alpha:
            return verdict(State.PROMOTABLE, f"{accuracy_text} <= alpha {guard.alpha:g}: "
                                             f"candidate better, guardrails clear")
        return verdict(State.RUNNING, f"no verdict yet: {accuracy_text}, not significant "
                                      f"at alpha {guard.alpha:g}")

    step = config.steps[step_index]
    where = f"step {step_index + 1}/{len(config.steps)} at {_share_text(share)}"
    if fewest < step.min_samples:
        return verdict(State.RUNNING, f"{where}: {fewest} requests on the smaller arm < "
                                      f"min_samples {step.min_samples}")
    elapsed = now - step_started_at
    if elapsed < step.min_seconds:
        return verdict(State.RUNNING, f"{where}: {elapsed:g} s in step < min_seconds "
                                      f"{step.min_seconds:g}")
    passed = (f"{where} passed with {fewest} requests on the smaller arm, {elapsed:g} s in "
              f"step, guardrails clear ({accuracy_text})")
    if step_index + 1 == len(config.steps):
        return verdict(State.PROMOTABLE, passed)
    following = config.steps[step_index + 1].share
    return verdict(State.RUNNING, f"{passed}: advancing to {_share_text(following)}",
                   new_share=following, new_step=step_index + 1)
