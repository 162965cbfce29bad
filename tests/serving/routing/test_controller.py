"""The fleet controller over three routers that share a state directory, as pods share the
model repository: the controller decides on their summed counts, and every router follows."""

import logging
import math

import pytest
import yaml

from serving.routing.assignment import Variant
from serving.routing.controller import Controller, PrometheusError, prometheus_counts
from serving.routing.experiment import ExperimentFile
from serving.routing.feedback import FeedbackKey, FeedbackKeys
from serving.routing.fleet import COUNTERS
from serving.routing.router import LATENCY_BUCKETS, ExperimentEnded, Router
from serving.routing.state import StateStore

GUARDRAILS = {"min_requests": 60, "min_feedback": 60, "max_error_rate_increase": 0.05,
              "max_latency_p99_ratio": 1.2, "alpha": 0.05}


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class FakePrometheus:
    """Answers the controller's queries with the routers' own totals summed, as a Prometheus
    scraping every pod would over a window since the experiment started."""

    def __init__(self, routers):
        self.routers = routers
        self.down = False

    def __call__(self, expr):
        if self.down:
            raise PrometheusError("http://prometheus: connection refused")
        sums: dict[tuple, float] = {}
        for router in self.routers:
            for (_, variant), totals in router.totals().items():
                if "latency_seconds_bucket" in expr:
                    running = 0
                    for bound, count in zip([*LATENCY_BUCKETS, math.inf],
                                            totals.latency_counts, strict=True):
                        running += count
                        key = (variant.value, "+Inf" if math.isinf(bound) else str(bound))
                        sums[key] = sums.get(key, 0) + running
                    continue
                name = next(n for n in COUNTERS if f"sightline_ab_{n}_total" in expr)
                sums[variant.value,] = sums.get((variant.value,), 0) + getattr(totals, name)
        return [{"metric": dict(zip(("variant", "le"), key, strict=False)),
                 "value": [0, str(value)]} for key, value in sums.items()]


@pytest.fixture
def fleet(tmp_path):
    definitions = tmp_path / "experiments.yaml"

    def define(decided_by="controller"):
        definitions.write_text(yaml.safe_dump({"experiments": [{
            "name": "pets-next", "model": "pets", "baseline": {"version": 1},
            "candidate": {"version": 2}, "mode": "split", "decided_by": decided_by,
            "weights": {"baseline": 0.5, "candidate": 0.5}, "guardrails": GUARDRAILS}]}))

    define()
    clock, keys = Clock(), FeedbackKeys(FeedbackKey.generate())
    store = StateStore(tmp_path / ".experiments")
    routers = [Router(keys, store, clock=clock) for _ in range(3)]
    file = ExperimentFile(definitions)
    file.poll()
    for router in routers:
        router.set_experiments(file.current)
    prometheus = FakePrometheus(routers)
    controller = Controller(ExperimentFile(definitions), store, prometheus_counts(prometheus),
                            clock=clock)
    return routers, controller, prometheus, store, define


def serve_with_labels(routers, count, candidate_right: bool):
    """``count`` labelled requests spread over the routers: the baseline always right."""
    for i in range(count):
        router = routers[i % len(routers)]
        route = router.route("pets", f"user-{i}")
        signed = router.finished(route, True, 0.01, 1)
        right = route.variant is Variant.BASELINE or candidate_right
        served = routers[(i + 1) % len(routers)].verify(signed)  # labels reach another pod
        routers[(i + 1) % len(routers)].label(served, signed, 1 if right else 0)


def test_a_broken_candidate_is_rolled_back_on_the_fleet_counts_and_every_router_follows(fleet):
    routers, controller, _, store, _ = fleet
    assert controller.tick() == []  # the state is saved at once: every reader's window starts
    assert store.load("pets-next").state == "running"
    serve_with_labels(routers, 150, candidate_right=False)  # 50 per router: below min alone
    for router in routers:
        assert router.step() == [] and router.state("pets-next").candidate_share == 0.5
    changed = controller.tick()
    assert [(s.state, s.candidate_share) for s in changed] == [("rolled_back", 0.0)]
    assert "candidate worse" in changed[0].reason
    for router in routers:
        requests_seen = router.counts("pets-next")[1].requests
        (adopted,) = router.step()
        assert adopted == changed[0] and router.reason("pets-next") == changed[0].reason
        assert router.counts("pets-next")[1].requests == requests_seen > 0  # kept, for status
        assert {router.route("pets", f"user-{i}").variant for i in range(50)} == {
            Variant.BASELINE}
        assert router.decisions["pets-next", "rolled_back"] == 1
        assert router.step() == []  # adopted once
    assert controller.tick() == []  # terminal: nothing changes it


def test_routers_never_decide_a_controlled_experiment_nor_take_an_operator_share(fleet):
    routers, controller, _, _, _ = fleet
    controller.tick()
    serve_with_labels(routers[:1], 400, candidate_right=False)  # one router alone has plenty
    assert routers[0].step() == []
    assert routers[0].state("pets-next").state == "running"
    for action in (lambda r: r.set_share("pets-next", 0.1, "by hand"),
                   lambda r: r.end("pets-next", r.state("pets-next").state, "by hand")):
        with pytest.raises(ExperimentEnded, match="decided by the fleet's controller"):
            action(routers[0])


def test_an_unreachable_prometheus_decides_nothing_and_the_last_decision_holds(fleet, caplog):
    routers, controller, prometheus, store, _ = fleet
    controller.tick()
    serve_with_labels(routers, 150, candidate_right=False)
    prometheus.down = True
    with caplog.at_level(logging.ERROR, logger="sightline.routing"):
        assert controller.tick() == []
    assert "no decision this time, the last one holds" in caplog.text
    assert store.load("pets-next").state == "running"
    prometheus.down = False
    assert [s.state for s in controller.tick()] == ["rolled_back"]


def test_the_controller_leaves_experiments_that_servers_decide(fleet):
    routers, controller, _, store, define = fleet
    define(decided_by="server")
    assert controller.tick() == []
    assert store.load("pets-next") is None


def test_no_decision_on_a_window_shorter_than_the_minimum(fleet):
    routers, controller, _, store, _ = fleet
    controller.min_window_seconds = 60.0
    assert controller.tick() == []  # the window opens
    serve_with_labels(routers, 150, candidate_right=False)
    controller.clock.now += 59.0
    assert controller.tick() == [] and store.load("pets-next").state == "running"
    controller.clock.now += 1.0
    assert [s.state for s in controller.tick()] == ["rolled_back"]
