"""The router over fake clocks and a temporary state directory: no server, no model."""

import pytest

from serving.routing.assignment import Variant
from serving.routing.decide import State
from serving.routing.experiment import parse_experiments
from serving.routing.feedback import FeedbackKey, FeedbackKeys, FeedbackRejected
from serving.routing.router import ExperimentEnded, Router
from serving.routing.state import StateStore

GUARDRAILS = {"min_requests": 20, "min_feedback": 20, "max_error_rate_increase": 0.05,
              "max_latency_p99_ratio": 1.2, "alpha": 0.05}


def experiments(**fields):
    return parse_experiments({"experiments": [{
        "name": "pets-next", "model": "pets", "baseline": {"version": 1},
        "candidate": {"version": 2}, "mode": "split",
        "weights": {"baseline": 0.5, "candidate": 0.5}, "guardrails": GUARDRAILS, **fields}]})


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def router(tmp_path):
    router = Router(FeedbackKeys(FeedbackKey.generate()), StateStore(tmp_path / ".experiments"),
                    clock=Clock())
    router.set_experiments(experiments())
    return router


def serve(router, count, key="k", ok=True, seconds=0.01, predicted=1):
    """``count`` requests; -> their routes and signed ids."""
    out = []
    for i in range(count):
        route = router.route("pets", f"{key}{i}")
        out.append((route, router.finished(route, ok, seconds, predicted if ok else None)))
    return out


def test_routes_are_sticky_and_follow_the_share(router):
    first = [router.route("pets", f"user-{i}").variant for i in range(200)]
    assert first == [router.route("pets-next", f"user-{i}").variant for i in range(200)]
    assert 60 < first.count(Variant.CANDIDATE) < 140
    router.set_share("pets-next", 0.0, "off")
    assert {router.route("pets", f"user-{i}").variant for i in range(200)} == {Variant.BASELINE}
    assert router.route("birds", "user-1") is None


def test_late_labels_count_once_and_forgeries_never(router):
    (route, signed), = serve(router, 1, predicted=3)
    served = router.verify(signed)
    assert (served.experiment, served.variant, served.predicted_class) == (
        "pets-next", route.variant.value, 3)
    router.label(served, signed, 3)
    with pytest.raises(FeedbackRejected, match="already counted"):
        router.label(served, signed, 3)
    with pytest.raises(FeedbackRejected) as forged:
        router.verify(signed[:-1] + ("A" if signed[-1] != "A" else "B"))
    assert forged.value.reason in ("forged", "malformed")
    baseline, candidate = router.counts("pets-next")
    arm = candidate if route.variant is Variant.CANDIDATE else baseline
    assert (arm.requests, arm.feedback, arm.correct) == (1, 1, 1)


def test_an_operator_share_holds_until_a_verdict(router):
    router.set_share("pets-next", 0.2, "smaller first")
    for _ in range(5):
        router.step()
    assert router.state("pets-next").candidate_share == 0.2
    for route, signed in serve(router, 200, key="bad", ok=True):  # then the candidate is awful
        router.label(router.verify(signed), signed, 1 if route.variant is Variant.BASELINE
                     else 0)
    router.step()
    state = router.state("pets-next")
    assert (state.state, state.candidate_share) == (State.ROLLED_BACK, 0.0), state.reason
    with pytest.raises(ExperimentEnded, match="has ended"):
        router.set_share("pets-next", 0.5, "again")
    router.step()
    assert router.state("pets-next").state is State.ROLLED_BACK  # terminal stays terminal


def test_a_decision_survives_a_new_router_on_the_same_directory(router, tmp_path):
    router.end("pets-next", State.ROLLED_BACK, "by hand")
    again = Router(router.keys, StateStore(tmp_path / ".experiments"), clock=Clock())
    again.set_experiments(experiments())
    assert (again.state("pets-next").state, again.reason("pets-next")) == (
        State.ROLLED_BACK, "by hand")
    changed = Router(router.keys, StateStore(tmp_path / ".experiments"), clock=Clock())
    changed.set_experiments(experiments(salt="another"))
    assert changed.state("pets-next").state is State.RUNNING  # a new definition starts afresh


def test_a_state_that_cannot_be_saved_is_decided_on_in_memory(tmp_path, caplog):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    router = Router(FeedbackKeys(FeedbackKey.generate()), StateStore(blocked), clock=Clock())
    router.set_experiments(experiments())
    router.end("pets-next", State.ROLLED_BACK, "by hand")
    assert router.state("pets-next").state is State.ROLLED_BACK
    assert "cannot save its state" in caplog.text


def test_server_side_failures_count_and_the_totals_never_reset(router):
    serve(router, 10, ok=False)
    baseline, candidate = router.counts("pets-next")
    assert baseline.errors + candidate.errors == 10
    totals = router.totals()
    assert sum(t.errors for t in totals.values()) == 10
    assert sum(t.requests for t in totals.values()) == 10


def test_the_statistics_are_computed_outside_the_lock_requests_finish_under(router, monkeypatch):
    """Mann-Whitney over 4,096 latencies a side takes milliseconds; every routed request's
    ``finished`` takes the same lock, so it must be free while they are computed."""
    import serving.routing.router as router_module

    serve(router, 40, seconds=0.01)
    held = []
    real = router_module.slower_p_value

    def slower_p_value(baseline, candidate):
        free = router._lock.acquire(blocking=False)
        if free:
            router._lock.release()
        held.append(not free)
        return real(baseline, candidate)

    monkeypatch.setattr(router_module, "slower_p_value", slower_p_value)
    baseline, candidate = router.counts("pets-next")
    assert held == [False]
    assert baseline.requests + candidate.requests == 40
