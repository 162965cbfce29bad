"""decide(): one table row per rule, the canary's steps, terminal states, and purity."""

import dataclasses
import math
import time

import pytest

from serving.routing.decide import (
    CanaryStep,
    Decision,
    ExperimentConfig,
    Guardrails,
    Mode,
    State,
    VariantCounts,
    decide,
)

GUARDRAILS = Guardrails(min_requests=1_000, min_feedback=500, max_error_rate_increase=0.01,
                        max_latency_p99_ratio=1.2, alpha=0.05)
SPLIT = ExperimentConfig(Mode.SPLIT, weights=(0.5, 0.5), guardrails=GUARDRAILS)
SHADOW = ExperimentConfig("shadow", guardrails=GUARDRAILS)
CANARY = ExperimentConfig(Mode.CANARY, guardrails=GUARDRAILS, steps=(
    CanaryStep(0.05, min_samples=1_000, min_seconds=300),
    CanaryStep(0.25, min_samples=1_000, min_seconds=300),
    CanaryStep(0.50, min_samples=1_000, min_seconds=300)))


def arm(requests=2_000, feedback=1_000, correct=800, errors=2, p99=0.050,
        slower=1.0) -> VariantCounts:
    return VariantCounts(requests, feedback, correct, errors, p99, slower)


BASE = arm()
CANARY_BASE = arm(requests=19_000)  # 95 % of 20,000: the first step's split

# (id, config, state, step, seconds in step, baseline, candidate, state, share, step, reason)
CASES = [
    ("too few requests, even if awful", SPLIT, State.RUNNING, 0, 0, arm(requests=999),
     arm(requests=999, errors=500, correct=100), State.RUNNING, 0.5, 0, "999 requests"),
    ("an arm that gets nothing halts", SPLIT, State.RUNNING, 0, 0, arm(requests=1_000),
     arm(requests=0, feedback=0, correct=0, errors=0), State.HALTED_SRM, 0.0, 0,
     "baseline 1000 vs candidate 0 requests"),
    ("srm", SPLIT, State.RUNNING, 0, 0, BASE, arm(requests=1_700), State.HALTED_SRM, 0.0, 0,
     "p=8.14e-07"),
    ("srm tolerates chance", SPLIT, State.RUNNING, 0, 0, BASE, arm(requests=1_850),
     State.RUNNING, 0.5, 0, "no verdict yet"),
    ("error rate", SPLIT, State.RUNNING, 0, 0, BASE, arm(errors=40), State.ROLLED_BACK, 0.0, 0,
     "+0.0190 > max_error_rate_increase 0.01"),
    ("error rate within", SPLIT, State.RUNNING, 0, 0, BASE, arm(errors=21), State.RUNNING, 0.5,
     0, "no verdict yet"),
    ("latency", SPLIT, State.RUNNING, 0, 0, BASE, arm(p99=0.065, slower=0.01),
     State.ROLLED_BACK, 0.0, 0, "ratio 1.300 > max_latency_p99_ratio 1.2, and slower overall"),
    ("a high p99 alone is noise", SPLIT, State.RUNNING, 0, 0, BASE, arm(p99=0.065, slower=0.3),
     State.RUNNING, 0.5, 0, "no verdict yet"),
    ("latency within", SPLIT, State.RUNNING, 0, 0, BASE, arm(p99=0.060), State.RUNNING, 0.5, 0,
     "no verdict yet"),
    ("latency unknown", SPLIT, State.RUNNING, 0, 0, BASE, arm(p99=math.nan, correct=900),
     State.RUNNING, 0.5, 0, "latency p99 not yet known"),
    ("accuracy worse", SPLIT, State.RUNNING, 0, 0, BASE, arm(correct=740), State.ROLLED_BACK,
     0.0, 0, "always-valid p=0.0491 <= alpha 0.05: candidate worse"),
    ("accuracy not yet worse", SPLIT, State.RUNNING, 0, 0, BASE, arm(correct=750),
     State.RUNNING, 0.5, 0, "p=0.143"),
    ("too little feedback, even if awful", SPLIT, State.RUNNING, 0, 0, BASE,
     arm(feedback=499, correct=100), State.RUNNING, 0.5, 0, "499 labelled outcomes"),
    ("accuracy better", SPLIT, State.RUNNING, 0, 0, BASE, arm(correct=860), State.PROMOTABLE,
     0.5, 0, "p=0.0159 <= alpha 0.05: candidate better"),
    ("shadow better", SHADOW, State.RUNNING, 0, 0, BASE, arm(correct=860), State.PROMOTABLE,
     0.0, 0, "candidate better"),
    ("shadow drops copies by design: no split check", SHADOW, State.RUNNING, 0, 0, BASE,
     arm(requests=1_700), State.RUNNING, 0.0, 0, "no verdict yet"),
    ("canary advances", CANARY, State.RUNNING, 0, 301, CANARY_BASE, arm(requests=1_000),
     State.RUNNING, 0.25, 1, "advancing to 25%"),
    ("canary waits out the step", CANARY, State.RUNNING, 0, 299, CANARY_BASE,
     arm(requests=1_000), State.RUNNING, 0.05, 0, "299 s in step < min_seconds 300"),
    ("canary waits for samples", dataclasses.replace(CANARY, steps=(
        CanaryStep(0.05, min_samples=1_001, min_seconds=300),) + CANARY.steps[1:]),
     State.RUNNING, 0, 10_000, CANARY_BASE, arm(requests=1_000), State.RUNNING, 0.05, 0,
     "1000 requests on the smaller arm < min_samples 1001"),
    ("canary guardrail beats the clock", CANARY, State.RUNNING, 0, 301, CANARY_BASE,
     arm(requests=1_000, p99=0.1, slower=0.001), State.ROLLED_BACK, 0.0, 0, "ratio 2.000"),
    ("canary at its wrong split", CANARY, State.RUNNING, 1, 301, CANARY_BASE,
     arm(requests=1_000), State.HALTED_SRM, 0.0, 1, "sample ratio mismatch"),
    ("canary's last step passes", CANARY, State.RUNNING, 2, 301, arm(), arm(),
     State.PROMOTABLE, 0.5, 2, "step 3/3 at 50% passed"),
    ("rolled back stays", SPLIT, State.ROLLED_BACK, 0, 0, BASE, arm(correct=900),
     State.ROLLED_BACK, 0.0, 0, "terminal"),
    ("halted stays", CANARY, State.HALTED_SRM, 1, 10_000, CANARY_BASE, arm(requests=1_000),
     State.HALTED_SRM, 0.0, 1, "terminal"),
    ("promotable stays", SPLIT, State.PROMOTABLE, 0, 0, BASE, arm(errors=1_000),
     State.PROMOTABLE, 0.5, 0, "terminal"),
]


@pytest.mark.parametrize(("config", "state", "step", "seconds", "baseline", "candidate",
                          "expected_state", "expected_share", "expected_step", "reason"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_rule(config, state, step, seconds, baseline, candidate, expected_state,
                   expected_share, expected_step, reason):
    decision = decide(state, step, 1_000.0, 1_000.0 + seconds, baseline, candidate, config)
    assert (decision.state, decision.candidate_share, decision.step_index) == (
        expected_state, expected_share, expected_step), decision.reason
    assert reason in decision.reason


def test_a_canary_climbs_its_steps_to_promotable():
    """Following each decision's step, with counts restarted per step as the contract says."""
    state, step, started = State.RUNNING, 0, 0.0
    shares = []
    for now in (400.0, 800.0, 1_200.0):
        share = CANARY.candidate_share(step)
        candidate = arm(requests=round(20_000 * share))
        decision = decide(state, step, started, now, arm(requests=20_000 - candidate.requests),
                          candidate, CANARY)
        shares.append(decision.candidate_share)
        if decision.step_index != step:
            started = now
        state, step = decision.state, decision.step_index
    assert shares == [0.25, 0.5, 0.5] and state is State.PROMOTABLE


def test_the_same_counts_always_give_the_same_decision(monkeypatch):
    """No clock, no randomness, no memory of earlier calls."""
    def no_clock():
        raise AssertionError("decide read the clock")

    monkeypatch.setattr(time, "time", no_clock)
    monkeypatch.setattr(time, "monotonic", no_clock)
    arguments = (State.RUNNING, 0, 100.0, 500.0, CANARY_BASE, arm(requests=1_000), CANARY)
    first = decide(*arguments)
    for _, config, state, step, seconds, baseline, candidate, *_ in CASES:
        decide(state, step, 0.0, seconds, baseline, candidate, config)
    rebuilt = (State("running"), 0, 100.0, 500.0, arm(requests=19_000), arm(requests=1_000),
               dataclasses.replace(CANARY))
    assert decide(*arguments) == decide(*rebuilt) == first
    assert isinstance(first, Decision) and first.step_index == 1


@pytest.mark.parametrize("build", [
    lambda: ExperimentConfig("blue-green"),
    lambda: ExperimentConfig(Mode.SPLIT, weights=(1.0, 0.0)),
    lambda: ExperimentConfig(Mode.CANARY),
    lambda: ExperimentConfig(Mode.CANARY, steps=(CanaryStep(0.5), CanaryStep(0.25))),
    lambda: CanaryStep(1.0),
    lambda: Guardrails(max_latency_p99_ratio=0.9),
    lambda: VariantCounts(10, 5, 6, 0, 0.1),
    lambda: VariantCounts(10, 5, 5, 11, 0.1),
    lambda: VariantCounts(10, 5, 5, 0, 0.0),
    lambda: decide(State.RUNNING, 3, 0.0, 0.0, BASE, BASE, CANARY),
])
def test_bad_configs_and_counts_are_refused(build):
    with pytest.raises(ValueError):
        build()
