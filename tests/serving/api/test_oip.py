"""The Open Inference Protocol v2 through Triton's own client (tritonclient[grpc] from PyPI).

tritonclient pins protobuf < 7, so it lives in its own virtual environment (``.venv-triton``,
made by ``make tools``) and talks to the server from a subprocess, as a real client would.
"""

import json
import subprocess
import time

import grpc
import pytest

from serving.protos_gen.inference import grpc_predict_v2_pb2 as oip
from serving.protos_gen.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from serving.repository.publish import deploy
from tests.conftest import ROOT
from tests.serving.conftest import MODEL, expect_error, image_bytes, samples, scrape, value

TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"


def infer(**fields) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=MODEL, **fields)
    request.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        image_bytes())
    return request


@pytest.mark.skipif(not TRITON_PYTHON.exists(), reason="no .venv-triton: run `make tools`")
def test_triton_client_works_unchanged(server, tmp_path):
    image = tmp_path / "image.png"
    image.write_bytes(image_bytes())
    done = subprocess.run([str(TRITON_PYTHON), str(ROOT / "tests/serving/api/oip_client.py"),
                           f"127.0.0.1:{server.port}", str(image)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert (seen["live"], seen["ready"], seen["model_ready"], seen["unknown_ready"]) == \
        (True, True, True, False)
    assert seen["server"] == "sightline" and ["image", "BYTES"] in seen["inputs"]
    assert seen["bytes_shape"] == [2, 6], seen
    assert all(abs(s - 1) < 0.02 for s in seen["bytes_sums"]), seen  # int8 softmax: 1/256 steps
    assert seen["id"] == "oip-1"
    assert len(seen["classification"]) == 3 and all(len(row) == 2 for row in
                                                    seen["classification"])
    score, index, label = seen["classification"][0][0].split(":")
    assert 0 < float(score) <= 1 and 0 <= int(index) < 6 and label
    assert seen["heatmap_shape"] == [3, 32, 32] and len(seen["fp32_argmax"]) == 3
    assert seen["bad_status"] == "StatusCode.INVALID_ARGUMENT"
    assert "input 0" in seen["bad_message"]


def test_oip_and_classify_agree(server, channel):
    """The same pixels give the same probabilities through both APIs (stubs in-process)."""
    import numpy as np

    from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
    from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    request = oip.ModelInferRequest(model_name="gap", raw_input_contents=[pixels.tobytes()])
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 32, 32, 3])
    response = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    probabilities = np.frombuffer(response.raw_output_contents[0], "<f4")
    tensor = pb.Tensor(shape=[32, 32, 3], dtype="uint8", data=pixels.tobytes())
    classify = pb_grpc.ImageClassifierStub(channel).Classify(
        pb.ClassifyRequest(tensor=tensor, top_k=6), timeout=10)
    for c in classify.classes:
        assert abs(probabilities[c.index] - c.score) < 1e-6


def test_a_request_id_is_made_when_none_is_sent_and_echoed_when_one_is(channel):
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ModelInfer(infer(id="mine-1"), timeout=10).id == "mine-1"
    made = stub.ModelInfer(infer(), timeout=10).id
    assert len(made) == 32 and made != stub.ModelInfer(infer(), timeout=10).id


def test_a_version_label_is_named_by_the_model_label_parameter(server, channel, repository,
                                                               deployable):
    deploy(deployable("gap"), repository, label="canary")
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    request = infer()
    request.parameters["model_label"].string_param = "canary"
    for _ in range(200):  # the poller publishes version 2 within a second or so
        try:
            response = stub.ModelInfer(request, timeout=10)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
            time.sleep(0.05)
    assert response.model_version == "2"
    request.parameters["model_label"].string_param = "stable"
    with expect_error(grpc.StatusCode.NOT_FOUND, "no label 'stable'; labels: canary=2"):
        stub.ModelInfer(request, timeout=10)
    request.model_version = "2"
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "version or a label, not both"):
        stub.ModelInfer(request, timeout=10)
    request.parameters["model_label"].int64_param = 2
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "parameter model_label must be a string"):
        stub.ModelInfer(request, timeout=10)


def test_a_cancelled_infer_request_leaves_no_work_and_no_hold(repository, start_server):
    """The batcher waits 1.5 s for company, so the 48 images are still queued when the client
    cancels: none of them runs, and the version's holds come back at once."""
    server = start_server(repository, max_batch_size=64, max_queue_delay_ms=1500.0,
                          wait_when_idle=True, workers=1)
    request = oip.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[48]).contents.bytes_contents.extend(
        image_bytes(seed) for seed in range(48))
    servable = server.manager.get(MODEL)
    batches = value(samples(scrape(server)), "sightline_batch_size_count", model=MODEL,
                    version="1")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(request, timeout=30)
        end = time.monotonic() + 10
        while servable.holders < 48 and time.monotonic() < end:
            time.sleep(0.005)
        assert servable.holders == 48  # every image is queued
        call.cancel()
    end = time.monotonic() + 1.0  # well before the batcher's delay would run them
    while servable.holders and time.monotonic() < end:
        time.sleep(0.01)
    assert servable.holders == 0
    time.sleep(1.6)
    assert value(samples(scrape(server)), "sightline_batch_size_count", model=MODEL,
                 version="1") == batches
