"""A/B experiments on a real server on loopback: routing, late labels, rollback by itself."""

import json
import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest
import yaml

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as xpb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as xpb_grpc
from serving.repository.publish import deploy, set_label
from tests.conftest import ROOT
from tests.serving.conftest import MODEL, broken_copy, image_bytes, samples, scrape, value

GUARDRAILS = {"min_requests": 40, "min_feedback": 40, "max_error_rate_increase": 0.05,
              "max_latency_p99_ratio": 50.0, "alpha": 0.05}


def experiment(**fields) -> dict:
    return {"name": "gap-next", "model": MODEL, "baseline": {"version": 1},
            "candidate": {"version": 2}, "mode": "split",
            "weights": {"baseline": 0.5, "candidate": 0.5}, "guardrails": GUARDRAILS, **fields}


def rotated_labels(artifact, tmp_path):
    """The same model with its card's labels rotated by one: every answer names the wrong
    class, as a candidate trained on shuffled labels would."""
    copy = tmp_path / "rotated"
    shutil.copytree(artifact, copy)
    card = json.loads((copy / "card.json").read_text())
    card["labels"] = card["labels"][1:] + card["labels"][:1]
    (copy / "card.json").write_text(json.dumps(card))
    return copy


@pytest.fixture
def two_versions(repository, deployable, tmp_path):
    def make(candidate):
        deploy(candidate, repository)
        return repository

    return make


def start(start_server, repository, experiments: list[dict]):
    (repository / "experiments.yaml").write_text(yaml.safe_dump({"experiments": experiments}))
    return start_server(repository, version_policy="all", decide_seconds=0.05)


def classify_all(stub, count):
    images = [image_bytes(seed) for seed in range(8)]
    return [stub.Classify(pb.ClassifyRequest(image=images[i % 8], request_id=f"u{i}"),
                          timeout=10) for i in range(count)]


def wait_for(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_broken_candidate_is_rolled_back_by_itself_and_no_client_sees_an_error(
        two_versions, deployable, start_server, tmp_path):
    repository = two_versions(rotated_labels(deployable("gap"), tmp_path))
    server = start(start_server, repository, [experiment()])
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
    truth = {seed: stub.Classify(pb.ClassifyRequest(image=image_bytes(seed), model=pb.ModelSpec(
        name=MODEL, version=1)), timeout=10).classes[0].label for seed in range(8)}
    responses = classify_all(stub, 400)
    variants = {r.variant for r in responses}
    assert variants == {"baseline", "candidate"} and {r.experiment for r in responses} == {
        "gap-next"}
    assert all(r.model_version == (2 if r.variant == "candidate" else 1) for r in responses)
    feedback = [xpb.Feedback(feedback_id=r.feedback_id, true_label=truth[i % 8])
                for i, r in enumerate(responses)]
    sent = ab.SendFeedback(xpb.SendFeedbackRequest(feedback=feedback), timeout=10)
    assert sent.accepted == 400, [r.message for r in sent.results if not r.accepted][:3]
    again = ab.SendFeedback(xpb.SendFeedbackRequest(feedback=feedback[:1]), timeout=10)
    assert again.accepted == 0 and again.results[0].reason == "duplicate"
    assert wait_for(lambda: ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0].state
                    == "rolled_back")
    status = ab.ABStatus(xpb.ABStatusRequest(experiment="gap-next"), timeout=5).experiments[0]
    assert status.candidate_share == 0 and "candidate worse" in status.reason
    assert status.baseline.accuracy == 1.0 and status.candidate.accuracy == 0.0
    after = classify_all(stub, 50)  # everything goes to the baseline now, without an error
    assert {r.variant for r in after} == {"baseline"}
    state = json.loads((repository / ".experiments" / "gap-next.json").read_text())
    assert state["state"] == "rolled_back"
    found = samples(scrape(server))
    ab = {"experiment": "gap-next"}
    assert value(found, "sightline_ab_state", state="rolled_back", **ab) == 1
    assert value(found, "sightline_ab_state", state="running", **ab) == 0
    assert value(found, "sightline_ab_decisions_total", state="rolled_back", **ab) == 1
    assert value(found, "sightline_ab_candidate_share", **ab) == 0
    routed = {v: value(found, "sightline_ab_requests_total", variant=v, **ab)
              for v in ("baseline", "candidate")}
    assert sum(routed.values()) == 450 and routed["candidate"] == sum(
        r.variant == "candidate" for r in responses)
    timed = {v: value(found, "sightline_ab_latency_seconds_count", variant=v, **ab)
             for v in ("baseline", "candidate")}
    assert timed == routed  # every routed request succeeded, and was timed once
    assert value(found, "sightline_ab_latency_seconds_bucket", variant="baseline", le="+Inf",
                 **ab) == routed["baseline"]
    assert value(found, "sightline_ab_feedback_total", variant="baseline", **ab) == value(
        found, "sightline_ab_correct_total", variant="baseline", **ab) > 0
    assert value(found, "sightline_ab_correct_total", variant="candidate", **ab) == 0
    channel.close()


def test_an_a_a_experiment_never_rolls_back(repository, deployable, start_server):
    deploy(deployable("gap"), repository)  # version 2: the very same model
    server = start(start_server, repository, [experiment()])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
        responses = classify_all(stub, 300)
        feedback = [xpb.Feedback(feedback_id=r.feedback_id, true_label=r.classes[0].label)
                    for r in responses]
        assert ab.SendFeedback(xpb.SendFeedbackRequest(feedback=feedback),
                               timeout=10).accepted == 300
        time.sleep(0.5)  # ten decisions at least
        status = ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0]
        assert status.state == "running" and status.candidate_share == 0.5, status.reason


def test_a_candidate_that_is_not_served_leaves_the_baseline_answering(repository, start_server):
    server = start(start_server, repository, [experiment(candidate={"version": 7})])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        responses = classify_all(pb_grpc.ImageClassifierStub(channel), 60)
        assert {(r.variant, r.model_version) for r in responses} == {("baseline", 1)}


def test_forged_and_malformed_ids_are_refused_one_by_one(repository, deployable, start_server):
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
        good = classify_all(stub, 1)[0]
        assert good.request_id == "u0" and good.feedback_id.startswith("ab1.gap-next.")
        signed = good.feedback_id
        forged = signed[:-2] + ("AA" if not signed.endswith("AA") else "BB")
        sent = ab.SendFeedback(xpb.SendFeedbackRequest(feedback=[
            xpb.Feedback(feedback_id=signed, true_class=0),
            xpb.Feedback(feedback_id=forged, true_class=0),
            xpb.Feedback(feedback_id="not an id", true_class=0),
            xpb.Feedback(feedback_id=signed, true_class=0)]), timeout=5)
        assert [r.reason for r in sent.results] == ["", "forged", "malformed", "duplicate"]
        assert sent.accepted == 1


def test_the_decision_survives_a_restart(repository, deployable, start_server):
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ab = xpb_grpc.ExperimentsStub(channel)
        ab.SetWeight(xpb.SetWeightRequest(experiment="gap-next", candidate_share=0.2), timeout=5)
        time.sleep(0.3)  # six decisions: an operator's share holds while the verdict is "run"
        held = ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0]
        assert (held.state, held.candidate_share) == ("running", 0.2), held.reason
        ab.Rollback(xpb.EndRequest(experiment="gap-next", reason="by hand"), timeout=5)
        with pytest.raises(grpc.RpcError) as ended:  # an ended experiment takes no weight
            ab.SetWeight(xpb.SetWeightRequest(experiment="gap-next", candidate_share=0.5),
                         timeout=5)
        assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "has ended (rolled_back: by hand)" in ended.value.details()
    server.stop(grace=1.0, drain=0)
    again = start_server(repository, version_policy="all", decide_seconds=0.05)
    with grpc.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        status = xpb_grpc.ExperimentsStub(channel).ABStatus(xpb.ABStatusRequest(),
                                                            timeout=5).experiments[0]
        assert (status.state, status.candidate_share, status.reason) == (
            "rolled_back", 0.0, "by hand")


def test_the_file_is_reloaded_live_and_a_bad_one_keeps_the_last_good(repository, deployable,
                                                                      start_server, caplog):
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    path = repository / "experiments.yaml"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ab = xpb_grpc.ExperimentsStub(channel)

        def names():
            return [e.name for e in ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments]

        assert names() == ["gap-next"]
        path.write_text(yaml.safe_dump({"experiments": [experiment(name="gap-other")]}))
        assert wait_for(lambda: names() == ["gap-other"])
        path.write_text(yaml.safe_dump({"experiments": [experiment(mode="sideways")]}))
        assert wait_for(lambda: "rejected; still running gap-other" in caplog.text)
        assert "experiments[0].mode" in caplog.text
        assert names() == ["gap-other"]  # the last good file keeps running
        path.write_text(yaml.safe_dump({"experiments": []}))
        assert wait_for(lambda: names() == [])  # an emptied file stops every experiment


def test_the_sightline_ab_command(repository, deployable, start_server):
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    target = ["--target", f"127.0.0.1:{server.port}"]

    def ab(*args):
        done = subprocess.run([sys.executable, "-m", "serving.ab", *target, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, out = ab("status")
    assert code == 0 and "gap-next (split on gap): running, candidate share 0.5" in out, out
    assert "baseline  v1" in out and "candidate v2" in out
    code, out = ab("set-weight", "gap-next", "0.1", "--reason", "smaller first")
    assert code == 0 and "candidate share 0.1" in out and "reason: smaller first" in out, out
    code, out = ab("set-weight", "gap-next", "1.5")
    assert code == 1 and "INVALID_ARGUMENT: candidate_share must be between 0 and 1" in out
    code, out = ab("rollback", "nope")
    assert code == 1 and "NOT_FOUND: no experiment 'nope'; running: gap-next" in out, out
    code, out = ab("promote", "gap-next")  # the baseline is a version: nothing to move
    assert code == 1 and "FAILED_PRECONDITION" in out and "promotion moves a label" in out, out
    code, out = ab("rollback", "gap-next", "--reason", "two\nlines")
    assert code == 1 and "INVALID_ARGUMENT: reason must be one printable line" in out, out
    code, out = ab("rollback", "gap-next")
    assert code == 0 and "rolled_back, candidate share 0" in out, out


def test_promote_moves_the_baseline_label_and_never_leaves_it_dangling(repository, deployable,
                                                                        start_server):
    deploy(deployable("gap"), repository)
    set_label(repository / MODEL, "stable", 1)
    labels = repository / MODEL / "labels.json"
    server = start(start_server, repository, [
        experiment(baseline={"label": "stable"}, candidate={"version": 7}),
        experiment(name="gap-two", model="gap-unused", baseline={"version": 1})])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ab = xpb_grpc.ExperimentsStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            ab.Promote(xpb.EndRequest(experiment="gap-next"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not served" in refused.value.details()
        assert json.loads(labels.read_text()) == {"stable": 1}
    (repository / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [
        experiment(baseline={"label": "stable"})]}))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ab = xpb_grpc.ExperimentsStub(channel)
        assert wait_for(lambda: ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[
            0].baseline.label == "stable" and ab.ABStatus(
            xpb.ABStatusRequest(), timeout=5).experiments[0].candidate.version == 2)
        promoted = ab.Promote(xpb.EndRequest(experiment="gap-next", reason="ship"), timeout=5)
        assert (promoted.state, promoted.candidate_share) == ("promotable", 1.0)
        assert json.loads(labels.read_text()) == {"stable": 2}
        time.sleep(0.3)  # decisions leave an ended experiment as it is
        assert ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0].candidate_share == 1


def test_only_an_operator_token_moves_traffic(repository, deployable, start_server, tmp_path):
    deploy(deployable("gap"), repository)
    (tmp_path / "tokens").write_text("client-secret\n")
    (tmp_path / "admin").write_text("operator-secret\n")
    (repository / "experiments.yaml").write_text(yaml.safe_dump({"experiments": [experiment()]}))
    server = start_server(repository, version_policy="all", decide_seconds=0.05,
                          auth_token_file=str(tmp_path / "tokens"),
                          admin_token_file=str(tmp_path / "admin"))
    client = [("authorization", "Bearer client-secret")]
    operator = [("authorization", "Bearer operator-secret")]
    weight = xpb.SetWeightRequest(experiment="gap-next", candidate_share=0.3)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        ab = xpb_grpc.ExperimentsStub(channel)
        assert ab.ABStatus(xpb.ABStatusRequest(), timeout=5, metadata=client).experiments
        pb_grpc.ImageClassifierStub(channel).Classify(
            pb.ClassifyRequest(image=image_bytes()), timeout=10, metadata=client)
        for metadata, code in ((client, grpc.StatusCode.PERMISSION_DENIED),
                               ([], grpc.StatusCode.PERMISSION_DENIED)):
            with pytest.raises(grpc.RpcError) as refused:
                ab.SetWeight(weight, timeout=5, metadata=metadata)
            assert refused.value.code() == code
        with pytest.raises(grpc.RpcError) as refused:  # the operator's token is not a client's
            ab.ABStatus(xpb.ABStatusRequest(), timeout=5, metadata=operator)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ab.SetWeight(weight, timeout=5, metadata=operator).candidate_share == 0.3


def test_shadow_copies_compare_the_candidate_and_never_reach_the_client(repository,
                                                                         deployable,
                                                                         start_server):
    deploy(deployable("gap"), repository)  # the same model: they must agree and look alike
    shadow = experiment(mode="shadow", shadow={"queue_size": 4, "explain_sample": 1.0})
    del shadow["weights"]
    server = start(start_server, repository, [shadow])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
        responses = classify_all(stub, 40)
        assert {(r.variant, r.model_version) for r in responses} == {("baseline", 1)}

        def status():
            return ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0]

        assert wait_for(lambda: status().shadow.mirrored + status().shadow.dropped == 40)
        seen = status()
        assert seen.shadow.mirrored >= 4 and seen.shadow.agreement == 1.0
        assert seen.shadow.explained == seen.shadow.mirrored
        assert seen.shadow.mean_map_correlation > 0.99
        assert seen.shadow.mean_top_region_overlap > 0.9
        assert seen.candidate.requests == seen.shadow.mirrored and seen.baseline.requests == 40
        found = samples(scrape(server))
        assert value(found, "sightline_ab_shadow_mirrored_total",
                     experiment="gap-next") == seen.shadow.mirrored
        assert value(found, "sightline_ab_shadow_dropped_total",
                     experiment="gap-next") == seen.shadow.dropped


def test_a_full_shadow_queue_drops_copies_and_slows_no_client(repository, deployable,
                                                               start_server):
    deploy(deployable("gap"), repository)
    shadow = experiment(mode="shadow", shadow={"queue_size": 1, "explain_sample": 1.0})
    del shadow["weights"]
    server = start(start_server, repository, [shadow])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
        futures = [stub.Classify.future(pb.ClassifyRequest(image=image_bytes(i % 8)),
                                        timeout=20) for i in range(64)]
        assert all(f.result().variant == "baseline" for f in futures)  # no client error
        assert wait_for(lambda: ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[
            0].shadow.dropped > 0)


def test_the_cheapest_floods_of_send_feedback_cost_little(repository, deployable, start_server):
    """The most labels one call may carry, each with a huge id or label: refused one by one
    without a lookup, each answer clipped; one more label refuses the whole call."""
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        ab = xpb_grpc.ExperimentsStub(channel)
        huge = "ab1." + "x" * 10_000
        started = time.perf_counter()
        sent = ab.SendFeedback(xpb.SendFeedbackRequest(feedback=[
            xpb.Feedback(feedback_id=huge, true_label="y" * 1_000) for _ in range(1_000)]),
            timeout=10)
        assert time.perf_counter() - started < 2.0
        assert sent.accepted == 0 and {r.reason for r in sent.results} == {"malformed"}
        assert max(len(r.feedback_id) for r in sent.results) <= 128
        assert max(len(r.message) for r in sent.results) <= 400
        with pytest.raises(grpc.RpcError) as refused:
            ab.SendFeedback(xpb.SendFeedbackRequest(feedback=[
                xpb.Feedback(feedback_id="x", true_class=0)] * 1_001), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "1,001 labels in one call; at most 1,000" in refused.value.details()


def test_a_candidate_unloaded_or_failing_to_load_mid_experiment_costs_no_request(
        repository, deployable, start_server, tmp_path):
    """Under steady load, the candidate's version is deleted, then a copy that cannot load
    takes its place: every request is answered, by the baseline once the candidate is gone."""
    deploy(deployable("gap"), repository)
    server = start(start_server, repository, [experiment()])
    answered, failed, stop = [], [], threading.Event()

    def client(worker):
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            sent = 0
            while not stop.is_set():
                try:
                    answered.append(stub.Classify(pb.ClassifyRequest(
                        image=image_bytes(sent % 8), request_id=f"w{worker}-{sent}"),
                        timeout=10).variant)
                except grpc.RpcError as exc:
                    failed.append(f"{exc.code()}: {exc.details()}")
                sent += 1

    clients = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for thread in clients:
        thread.start()
    try:
        assert wait_for(lambda: answered.count("candidate") >= 20)
        shutil.rmtree(repository / MODEL / "2")  # unloaded while requests are in flight
        unloaded_at = len(answered)
        assert wait_for(lambda: len(answered) > unloaded_at + 200
                        and set(answered[-100:]) == {"baseline"})
        shutil.copytree(broken_copy(deployable("gap"), tmp_path), repository / MODEL / "2")
        broken_at = len(answered)
        assert wait_for(lambda: len(answered) > broken_at + 200)
        time.sleep(0.5)  # several polls of the repository see the broken version
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    assert failed == []
    assert set(answered[broken_at:]) == {"baseline"}


def test_a_canary_comes_back_on_its_step_after_a_restart(repository, deployable,
                                                          start_server):
    """A canary advances a step on its own checks; a restarted server resumes that step."""
    deploy(deployable("gap"), repository)  # the same model: the canary's checks pass
    guard = {**GUARDRAILS, "min_requests": 10, "min_feedback": 10}
    canary = experiment(mode="canary", guardrails=guard, steps=[
        {"share": 0.25, "min_samples": 10, "min_seconds": 0},
        {"share": 0.5, "min_samples": 10**6, "min_seconds": 0}])
    del canary["weights"]
    server = start(start_server, repository, [canary])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub, ab = pb_grpc.ImageClassifierStub(channel), xpb_grpc.ExperimentsStub(channel)
        responses = classify_all(stub, 160)
        assert 0.1 < sum(r.variant == "candidate" for r in responses) / 160 < 0.4
        sent = ab.SendFeedback(xpb.SendFeedbackRequest(feedback=[
            xpb.Feedback(feedback_id=r.feedback_id, true_label=r.classes[0].label)
            for r in responses]), timeout=10)
        assert sent.accepted == 160

        def status():
            return ab.ABStatus(xpb.ABStatusRequest(), timeout=5).experiments[0]

        assert wait_for(lambda: status().step == 1), status().reason
        assert (status().state, status().candidate_share) == ("running", 0.5)
    server.stop(grace=1.0, drain=0)
    again = start_server(repository, version_policy="all", decide_seconds=0.05)
    with grpc.insecure_channel(f"127.0.0.1:{again.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        resumed = xpb_grpc.ExperimentsStub(channel).ABStatus(xpb.ABStatusRequest(),
                                                             timeout=5).experiments[0]
        assert (resumed.state, resumed.step, resumed.candidate_share) == ("running", 1, 0.5)
        responses = classify_all(stub, 200)
        assert 0.35 < sum(r.variant == "candidate" for r in responses) / 200 < 0.65
