"""The A/B controller on the fleet (issue 12): three servers with a broken candidate, a real
Prometheus scraping all three, and ``sightline-ab controller`` rolling the candidate back on
every server.

The traffic is sized so that no server has ``min_requests`` on an arm by itself while the fleet
has them on both: the verdict needs every server's counts summed, which only the controller sees.
The controller runs as its own process, ``--once`` per decision, so the test knows exactly when
the window starts and which counts the verdict came from. While the experiment runs, each
server refuses an operator's SetWeight, Rollback and Promote: one replica cannot speak for the
fleet.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import grpc
import pytest
import yaml

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as xpb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as xpb_grpc
from serving.repository.publish import deploy
from serving.routing.experiment import load_experiments
from serving.routing.fleet import fleet_counts, queries
from tests.conftest import ROOT
from tests.fleet.conftest import service_config
from tests.fleet.load import channel
from tests.monitoring.conftest import start_prometheus  # noqa: F401 - the fixture
from tests.serving.api.test_experiments import experiment, rotated_labels, wait_for
from tests.serving.conftest import MODEL, image_bytes

NAME = "gap-next"
MIN_REQUESTS = 60  # per arm: about 120 on the fleet, about 40 on any one server
GUARDRAILS = {"min_requests": MIN_REQUESTS, "min_feedback": MIN_REQUESTS,
              "max_error_rate_increase": 0.05, "max_latency_p99_ratio": 50.0, "alpha": 0.05}
REQUESTS = 240
IN_FLIGHT = 6
IMAGE = image_bytes(seed=7, size=32)
# increase() extrapolates to the window's end by up to 1.1 scrape intervals (1 s each), so the
# window is kept this long: ten seconds of samples or more, at most 11% over. It never
# undercounts here, as every counter's first sample in the window is 0.
WINDOW_SECONDS = 12.0
EXTRAPOLATION = 1.15
ARMS = ("baseline", "candidate")


def classify_all(stub, first: int, count: int) -> list:
    """``count`` Classify calls, IN_FLIGHT at a time, request ids (the sticky keys) u<first>
    onwards; a call that fails raises, so a returned list means no client saw an error."""
    responses = []
    for start in range(first, first + count, IN_FLIGHT):
        futures = [stub.Classify.future(pb.ClassifyRequest(image=IMAGE, request_id=f"u{i}"),
                                        timeout=10)
                   for i in range(start, min(start + IN_FLIGHT, first + count))]
        responses += [future.result() for future in futures]
    return responses


def run_controller(prometheus, definitions, repository) -> str:
    """One ``sightline-ab controller --once``; -> its log."""
    done = subprocess.run(
        [sys.executable, "-m", "serving.ab", "controller", "--prometheus", prometheus.url,
         "--definitions", str(definitions), "--repository", str(repository), "--once",
         "--min-window-seconds", str(WINDOW_SECONDS)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def arm_counts(server, counter: str) -> dict[str, float]:
    """The server's own ``sightline_ab_<counter>_total`` by variant."""
    found = server.scrape()
    return {arm: found.get((f"sightline_ab_{counter}_total",
                            (("experiment", NAME), ("variant", arm))), 0.0) for arm in ARMS}


def status(server) -> xpb.ExperimentStatus:
    with grpc.insecure_channel(server.address) as direct:
        return xpb_grpc.ExperimentsStub(direct).ABStatus(
            xpb.ABStatusRequest(experiment=NAME), timeout=5).experiments[0]


def operator_refusals(server) -> list[tuple[grpc.StatusCode, str]]:
    """(code, details) of SetWeight, Rollback and Promote sent to this one server."""
    refusals = []
    with grpc.insecure_channel(server.address) as direct:
        ab = xpb_grpc.ExperimentsStub(direct)
        for call in (lambda: ab.SetWeight(xpb.SetWeightRequest(experiment=NAME,
                                                               candidate_share=0.1), timeout=5),
                     lambda: ab.Rollback(xpb.EndRequest(experiment=NAME), timeout=5),
                     lambda: ab.Promote(xpb.EndRequest(experiment=NAME), timeout=5)):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            refusals.append((refused.value.code(), refused.value.details()))
    return refusals


def test_the_controller_rolls_a_broken_candidate_back_on_every_server(
        fleet, deployable, start_prometheus, tmp_path):  # noqa: F811 - the imported fixture
    deploy(rotated_labels(deployable("gap"), tmp_path), fleet.repository)  # v2: always wrong
    definitions = tmp_path / "experiments.yaml"
    definitions.write_text(yaml.safe_dump({"experiments": [
        experiment(decided_by="controller", guardrails=GUARDRAILS)]}))
    key = tmp_path / "feedback.key"  # one key: any server takes a label another one signed
    key.write_text(secrets.token_hex(32))
    key.chmod(0o600)
    servers = fleet.start(3, args=["--version-policy", "all", "--decide-seconds", "0.2",
                                   "--experiments-file", str(definitions),
                                   "--feedback-key-file", str(key)], wait=False)
    prometheus = start_prometheus([f"{s.host}:{s.metrics_port}" for s in servers])
    for server in servers:  # Prometheus starts while they warm up
        server.wait_serving()
    state_file = fleet.repository / ".experiments" / f"{NAME}.json"
    where = f'experiment="{NAME}"'
    # scraping all three before the window opens (its first scrapes come seconds after start)
    prometheus.wait_for(f"count(sightline_ab_requests_total{{{where}}}) == {3 * len(ARMS)}")

    run_controller(prometheus, definitions, fleet.repository)  # saved at once: the window opens
    opened = json.loads(state_file.read_text())
    assert (opened["state"], opened["candidate_share"]) == ("running", 0.5)
    # every counter's first sample in the window is 0, so increase() counts all of the traffic
    prometheus.wait_for(f'count(timestamp(sightline_ab_requests_total{{{where}}}) > '
                        f'{opened["updated_at"]}) == {3 * len(ARMS)}')

    options = [("grpc.service_config", service_config("round_robin"))]
    with channel(fleet.target(), options) as balanced:
        stub, ab = pb_grpc.ImageClassifierStub(balanced), xpb_grpc.ExperimentsStub(balanced)
        truth = stub.Classify(pb.ClassifyRequest(image=IMAGE, model=pb.ModelSpec(
            name=MODEL, version=1)), timeout=10).classes[0].label
        responses = classify_all(stub, 0, REQUESTS)
        assert all((r.variant, r.model_version) in (("baseline", 1), ("candidate", 2))
                   for r in responses)
        assert all((r.classes[0].label == truth) == (r.variant == "baseline") for r in responses)
        labels = [xpb.Feedback(feedback_id=r.feedback_id, true_label=truth) for r in responses]
        third = REQUESTS // 3  # three calls: round_robin takes them to the three servers
        accepted = sum(ab.SendFeedback(xpb.SendFeedbackRequest(feedback=labels[i:i + third]),
                                       timeout=10).accepted for i in range(0, REQUESTS, third))
        assert accepted == REQUESTS

        served = {arm: sum(r.variant == arm for r in responses) for arm in ARMS}
        per_server = [arm_counts(server, "requests") for server in servers]
        assert {arm: sum(c[arm] for c in per_server) for arm in ARMS} == served
        assert all(0 < counts[arm] < MIN_REQUESTS for counts in per_server for arm in ARMS), (
            per_server)  # no server could decide alone...
        assert min(served.values()) >= MIN_REQUESTS, served  # ...but the fleet can

        for server in servers:  # running, and no one replica moves the fleet's traffic
            refusals = operator_refusals(server)
            assert all(code == grpc.StatusCode.FAILED_PRECONDITION
                       and "decided by the fleet's controller" in details
                       for code, details in refusals), refusals
            running = status(server)
            assert (running.state, running.candidate_share) == ("running", 0.5), running.reason
        assert json.loads(state_file.read_text()) == opened

        for counter, total in (("requests", REQUESTS), ("feedback", REQUESTS)):
            prometheus.wait_for(f"sum(sightline_ab_{counter}_total{{{where}}}) == {total}")
        time.sleep(max(0.0, opened["updated_at"] + WINDOW_SECONDS + 0.1 - time.time()))
        log = run_controller(prometheus, definitions, fleet.repository)
        decided = json.loads(state_file.read_text())
        assert (decided["state"], decided["candidate_share"]) == ("rolled_back", 0.0), log
        assert "candidate worse" in decided["reason"] and "fleet-wide" in log, log

        # The counts the verdict came from: the controller's queries at its decision's time.
        at = decided["updated_at"]
        answers = {what: prometheus.api("query", query=expr, time=at)["result"] for what, expr
                   in queries(load_experiments(definitions)[NAME], at - opened["updated_at"])
                   .items()}
        seen = dict(zip(ARMS, fleet_counts(answers), strict=True))
        for counter in ("requests", "feedback", "correct"):
            counted = {arm: sum(arm_counts(s, counter)[arm] for s in servers) for arm in ARMS}
            by_prometheus = {arm: getattr(seen[arm], counter) for arm in ARMS}
            print(f"{counter}: servers {counted}, controller {by_prometheus}")
            assert all(counted[arm] <= by_prometheus[arm] <= counted[arm] * EXTRAPOLATION
                       for arm in ARMS), (counter, counted, by_prometheus)

        for server in servers:  # each adopts the decision within its decide interval
            assert wait_for(lambda s=server: status(s).state == "rolled_back", 5.0), (
                server.name, status(server).reason)
            adopted = status(server)
            assert (adopted.candidate_share, adopted.reason) == (0.0, decided["reason"])
            found = server.scrape()
            rolled_back = ("experiment", NAME), ("state", "rolled_back")
            assert found[("sightline_ab_state", rolled_back)] == 1
            assert found[("sightline_ab_decisions_total", rolled_back)] == 1
        after = classify_all(stub, 0, 60)  # the same keys: about half were the candidate's
        assert {r.variant for r in responses[:60]} == set(ARMS)
        assert {r.variant for r in after} == {"baseline"}
        assert all(arm_counts(s, "requests")["baseline"] > per_server[i]["baseline"]
                   for i, s in enumerate(servers))  # on every server
