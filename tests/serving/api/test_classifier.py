"""ImageClassifier over a real server on loopback: Classify, heatmaps, streams, model info."""

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.cam import METHODS
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.repository.publish import deploy
from tests.serving.conftest import (
    MODEL,
    classify_request,
    expect_error,
    image_bytes,
    samples,
    scrape,
    value,
    wait_for_version,
)


def test_classify_returns_top_k_with_labels_scores_and_timing(stub, deployable):
    from serving.card import load_card

    labels = load_card(deployable("gap")).labels
    response = stub.Classify(classify_request(top_k=3, request_id="r-1"), timeout=10)
    assert [c.label for c in response.classes] == [labels[c.index] for c in response.classes]
    scores = [c.score for c in response.classes]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.001
    assert (response.model_name, response.model_version) == (MODEL, 1)
    assert response.request_id == "r-1"
    t = response.timing
    assert 0 < t.inference_seconds <= t.total_seconds and t.decode_seconds > 0
    assert not response.HasField("heatmap")


def test_default_top_k_and_generated_request_id(stub):
    response = stub.Classify(classify_request(), timeout=10)
    assert len(response.classes) == 5 and len(response.request_id) == 32


def test_the_same_image_gets_the_same_answer_as_bytes_and_as_a_tensor(stub):
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    by_bytes = stub.Classify(pb.ClassifyRequest(image=png.getvalue(), top_k=6), timeout=10)
    tensor = pb.Tensor(shape=[32, 32, 3], dtype="uint8", data=pixels.tobytes())
    by_tensor = stub.Classify(pb.ClassifyRequest(tensor=tensor, top_k=6), timeout=10)
    assert [c.index for c in by_bytes.classes] == [c.index for c in by_tensor.classes]
    np.testing.assert_allclose([c.score for c in by_bytes.classes],
                               [c.score for c in by_tensor.classes], atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_heatmap_png_and_raw_map_for_every_method(stub, method):
    request = classify_request(explain=pb.ExplainRequest(method=method, png_overlay=True,
                                                         raw_map=True))
    response = stub.Classify(request, timeout=10)
    heatmap = response.heatmap
    assert heatmap.method == method and heatmap.target_class == response.classes[0].index
    overlay = Image.open(io.BytesIO(heatmap.png))
    assert overlay.size == (32, 32) and overlay.mode == "RGB"
    raw = np.frombuffer(heatmap.raw, dtype="<f4").reshape(tuple(heatmap.shape))
    assert raw.shape == (32, 32) and raw.min() >= 0 and raw.max() <= 1


def test_heatmap_for_a_chosen_class_differs_from_top1(stub):
    base = stub.Classify(classify_request(explain=pb.ExplainRequest(raw_map=True)), timeout=10)
    other = (base.classes[0].index + 1) % 6
    request = classify_request(explain=pb.ExplainRequest(raw_map=True, target_class=other))
    chosen = stub.Classify(request, timeout=10)
    assert chosen.heatmap.target_class == other
    assert chosen.heatmap.raw != base.heatmap.raw


def test_explain_with_no_output_asked_defaults_to_the_png(stub):
    response = stub.Classify(classify_request(explain=pb.ExplainRequest()), timeout=10)
    assert response.heatmap.png.startswith(b"\x89PNG") and not response.heatmap.raw


def test_stream_answers_every_request_and_an_error_does_not_end_it(stub):
    requests = [classify_request(image=image_bytes(i), request_id=f"s{i}", top_k=2)
                for i in range(40)]
    requests[7] = pb.ClassifyRequest(image=b"not an image", request_id="bad")
    requests[20].explain.png_overlay = True
    responses = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=30)}
    assert set(responses) == {r.request_id for r in requests}
    assert responses["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "image" in responses["bad"].error.message
    good = [r for key, r in responses.items() if key != "bad"]
    assert all(len(r.classes) == 2 and not r.HasField("error") for r in good)
    assert responses["s20"].heatmap.png.startswith(b"\x89PNG")


def test_stream_results_equal_unary_results(stub):
    requests = [classify_request(image=image_bytes(i), request_id=str(i)) for i in range(8)]
    streamed = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=30)}
    for request in requests:
        unary = stub.Classify(request, timeout=10)
        assert [c.index for c in unary.classes] == [c.index for c in
                                                     streamed[request.request_id].classes]


def test_model_info(stub, deployable):
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    assert (info.name, info.version, list(info.versions)) == (MODEL, 1, [1])
    assert (info.input_height, info.input_width, info.variant) == (32, 32, "int8")
    assert len(info.classes) == 6 and info.cam_head == "gap" and "gradcam" in info.cam_methods
    assert len(info.sha256) == 64


def test_versions_and_labels_are_addressable(server, stub, repository, deployable):
    deploy(deployable("gap"), repository, label="canary")
    wait_for_version(stub, 2)
    for spec in [pb.ModelSpec(name=MODEL), pb.ModelSpec(name=MODEL, label="canary")]:
        assert stub.Classify(classify_request(model=spec), timeout=10).model_version == 2
    with expect_error(grpc.StatusCode.NOT_FOUND, "no version 1"):  # latest-1 policy unloads v1
        stub.Classify(classify_request(model=pb.ModelSpec(name=MODEL, version=1)), timeout=10)
    with expect_error(grpc.StatusCode.NOT_FOUND, "no label 'stable'; labels: canary=2"):
        stub.Classify(classify_request(model=pb.ModelSpec(name=MODEL, label="stable")), timeout=10)


def test_compressed_requests_and_responses(repository, start_server):
    server = start_server(repository, compression="gzip")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}",
                               compression=grpc.Compression.Gzip) as channel:
        from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

        response = pb_grpc.ImageClassifierStub(channel).Classify(classify_request(), timeout=10)
        assert len(response.classes) == 5


def test_a_bug_in_one_stream_request_answers_internal_and_the_stream_goes_on(server, stub):
    submit = server.inference.submit

    def broken(**request):
        if request.get("image") == b"boom":
            raise RuntimeError("a bug")
        return submit(**request)

    server.inference.submit = broken
    requests = [classify_request(request_id="a"), pb.ClassifyRequest(image=b"boom",
                                                                     request_id="b"),
                classify_request(request_id="c")]
    responses = {r.request_id: r for r in stub.ClassifyStream(iter(requests), timeout=10)}
    assert responses["b"].error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "internal error" in responses["b"].error.message
    assert responses["a"].classes and responses["c"].classes
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(pb.ClassifyRequest(image=b"boom"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL


def test_a_stream_cancelled_midway_releases_everything_it_held(repository, start_server):
    import time

    from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

    # Batches wait 300 ms for company, so requests are still queued when the client leaves.
    server = start_server(repository, max_queue_delay_ms=300.0, wait_when_idle=True,
                          max_batch_size=16, workers=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    requests = (classify_request(image=image_bytes(i), request_id=str(i)) for i in range(200))
    call = pb_grpc.ImageClassifierStub(channel).ClassifyStream(requests, timeout=30)
    next(call)
    servable = server.manager.get(MODEL)
    assert servable.holders > 0  # the next batches are queued
    call.cancel()
    channel.close()
    end = time.monotonic() + 10
    while servable.holders and time.monotonic() < end:
        time.sleep(0.05)
    assert servable.holders == 0
    assert value(samples(scrape(server)), "sightline_in_flight_requests") == 0
