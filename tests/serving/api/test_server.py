"""The server's lifecycle on loopback: health, hot reload under load, a rejected version,
deadlines and load shedding, and that the serve extra needs no TensorFlow (SIGTERM:
test_shutdown.py)."""

import json
import os
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monitoring.local_prometheus import free_port
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.repository.publish import deploy
from tests.conftest import ROOT
from tests.serving.conftest import (
    MODEL,
    broken_copy,
    classify_request,
    expect_error,
    samples,
    scrape,
    value,
    wait_for_version,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_of(channel, service=""):
    stub = health_pb2_grpc.HealthStub(channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_waits_for_a_model_and_turns_off_at_shutdown(tmp_path, start_server, deployable):
    models = tmp_path / "empty-models"
    models.mkdir()
    server = start_server(models)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        services = ["", "sightline.classifier.v1.ImageClassifier", "inference.GRPCInferenceService"]
        assert [health_of(channel, s) for s in services] == [NOT_SERVING] * 3
        with expect_error(grpc.StatusCode.UNAVAILABLE, "no model is loaded yet"):
            pb_grpc.ImageClassifierStub(channel).Classify(classify_request(), timeout=5)
        deploy(deployable("gap"), models)
        end = time.monotonic() + 20
        while health_of(channel) != SERVING and time.monotonic() < end:
            time.sleep(0.05)
        assert [health_of(channel, s) for s in services] == [SERVING] * 3
        stopper = threading.Thread(target=server.stop, args=(2.0, 1.0))
        stopper.start()
        time.sleep(0.3)  # inside the 1 s drain: still answering, and saying it is going
        assert [health_of(channel, s) for s in services] == [NOT_SERVING] * 3
        server.update_health()  # a reload's refresh must not undo the shutdown
        assert health_of(channel) == NOT_SERVING
        stopper.join()
        with pytest.raises(grpc.RpcError) as gone:
            health_of(channel)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


def test_hot_reload_under_load_fails_no_request(server, stub, repository, deployable):
    failures, versions, stop = [], set(), threading.Event()

    def load():
        while not stop.is_set():
            try:
                versions.add(stub.Classify(classify_request(), timeout=10).model_version)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")

    workers = [threading.Thread(target=load) for _ in range(6)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    deploy(deployable("gap"), repository)
    wait_for_version(stub, 2)
    deploy(deployable("gap"), repository)
    wait_for_version(stub, 3)
    time.sleep(0.3)
    stop.set()
    for worker in workers:
        worker.join()
    assert failures == []
    assert versions >= {1, 3}
    assert server.manager.wait_for_unloads(10) and server.manager.models() == {MODEL: [3]}


def test_a_tampered_version_is_rejected_and_the_old_one_keeps_serving(server, stub, repository,
                                                                      deployable, caplog):
    scratch = repository.parent / "scratch"
    deploy(deployable("gap"), scratch)
    tampered = deploy(deployable("gap"), scratch)  # a valid version 2 directory ...
    with open(tampered / "model.tflite", "r+b") as handle:  # ... with a flipped byte
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with caplog.at_level("WARNING", logger="sightline.repository"):
        os.rename(tampered, repository / MODEL / "2")
        end = time.monotonic() + 10
        while server.manager.load_failures[MODEL] == 0 and time.monotonic() < end:
            time.sleep(0.05)
    assert server.manager.load_failures[MODEL] >= 1
    assert "sha256 mismatch" in caplog.text
    assert stub.Classify(classify_request(), timeout=10).model_version == 1
    assert server.manager.models() == {MODEL: [1]}


def test_a_restart_with_a_broken_newest_version_serves_the_previous_one(
        deployable, tmp_path, start_server):
    """The defect: good v1 and v2, a broken v3 (truncated model, matching sha256) on disk; a
    restarted server served nothing. Now it serves v2, and the failure is counted."""
    models = tmp_path / "models"
    for _ in range(2):
        deploy(deployable("gap"), models)
    broken = broken_copy(deployable("gap"), tmp_path)
    card = json.loads((broken / "card.json").read_text())
    (broken / "card.json").write_text(json.dumps({**card, "version": 3}))
    broken.rename(models / MODEL / "3")  # as a deploy without the load proof left it
    server = start_server(models, poll_seconds=0.2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        assert health_of(channel) == SERVING
        response = pb_grpc.ImageClassifierStub(channel).Classify(classify_request(), timeout=10)
        assert response.model_version == 2
        time.sleep(0.5)  # later scans neither retry v3 nor drop v2
        assert server.manager.models() == {MODEL: [2]}
    found = samples(scrape(server))
    assert value(found, "sightline_model_loads_total", model=MODEL, result="failure") == 1
    assert value(found, "sightline_model_loaded", model=MODEL) == 1


def test_queue_full_is_refused_at_once(repository, start_server):
    server = start_server(repository, max_queue_size=2, max_queue_delay_ms=1500.0,
                          max_batch_size=32, workers=1, wait_when_idle=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        waiting = [stub.Classify.future(classify_request(), timeout=20) for _ in range(2)]
        time.sleep(0.3)  # both sit in the queue, waiting 1.5 s for company
        started = time.monotonic()
        with expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"):
            stub.Classify(classify_request(), timeout=20)
        assert time.monotonic() - started < 1.0
        assert all(len(f.result().classes) == 5 for f in waiting)


def test_an_expired_request_is_never_run(repository, start_server):
    server = start_server(repository, max_queue_delay_ms=800.0, workers=1, wait_when_idle=True)
    batches = []
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        stub.Classify(classify_request(), timeout=10)  # the batcher exists now
        batcher = server.manager.get(MODEL).batcher
        batcher.on_batch = lambda kind, size: batches.append(size)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Classify(classify_request(), timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)  # past the batch delay: the expired job was dropped, not run
        assert batches == []
        assert stub.Classify(classify_request(), timeout=10).classes


def test_small_files_that_decode_big_cannot_take_the_memory(deployable):
    """The defect: 300 concurrent 5 KB PNGs that decode to 6320 x 6320 took 16 GB. Decodes are
    bounded (two per core) and big buffers go back to the system: 120 concurrent 4096 x 4096
    PNGs of 2 KB each peak under 700 MB (1.3 GB without the allocator setting, 3.9 GB with 64
    decodes at once)."""
    import io

    from PIL import Image

    from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb

    buffer = io.BytesIO()
    Image.new("P", (4096, 4096)).save(buffer, "PNG")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-dir", str(deployable("gap")), "--host",
         "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--drain-seconds", "0",
         "--processes", "1"],  # the process measured below is the one that decodes
        cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            request = pb.ClassifyRequest(image=buffer.getvalue())
            stub.Classify(request, timeout=60, wait_for_ready=True)
            calls = [stub.Classify.future(request, timeout=60) for _ in range(120)]
            assert all(call.result().classes for call in calls)
        with open(f"/proc/{process.pid}/status") as status:
            peak_mb = next(int(line.split()[1]) for line in status
                           if line.startswith("VmHWM")) / 1024
        assert peak_mb < 700, peak_mb
    finally:
        process.kill()
        process.wait()
