"""ClassifyBatch over a real server on loopback: order, per-request errors, the batch limit, one
shared dynamic batch, metrics per image, and every held version released."""

import time

import grpc
import numpy as np
import pytest

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.api.test_bad_input import CASES, OVER_IMAGE_LIMIT, with_input
from tests.serving.conftest import (
    MAX_ERROR_CHARS,
    MODEL,
    classify_request,
    expect_error,
    image_bytes,
    samples,
    scrape,
    value,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
CODES = {code.value[0]: code for code in grpc.StatusCode}
METHOD = ("unary", "sightline.classifier.v1.ImageClassifier", "ClassifyBatch")


def batch(*requests) -> pb.ClassifyBatchRequest:
    return pb.ClassifyBatchRequest(requests=requests)


@pytest.fixture(scope="module")
def shared_stub(shared_channel):
    return pb_grpc.ImageClassifierStub(shared_channel)


def released(server, timeout: float = 10.0) -> bool:
    """Whether every hold on the served version is given back within ``timeout``."""
    servable = server.manager.get(MODEL)
    end = time.monotonic() + timeout
    while servable.holders and time.monotonic() < end:
        time.sleep(0.02)
    return servable.holders == 0


def test_a_batch_answers_in_request_order_as_classify_does(shared_stub):
    requests = [classify_request(image=image_bytes(i), request_id=f"b{i}", top_k=6)
                for i in range(12)]
    requests[5].explain.png_overlay = True
    responses = shared_stub.ClassifyBatch(batch(*requests), timeout=30).responses
    assert [r.request_id for r in responses] == [r.request_id for r in requests]
    for request, answer in zip(requests, responses, strict=True):
        alone = shared_stub.Classify(request, timeout=20)
        assert not answer.HasField("error")
        assert [c.index for c in answer.classes] == [c.index for c in alone.classes]
        assert [c.label for c in answer.classes] == [c.label for c in alone.classes]
        np.testing.assert_allclose([c.score for c in answer.classes],
                                   [c.score for c in alone.classes], atol=1e-6)
        assert (answer.model_name, answer.model_version) == (MODEL, 1)
    assert responses[5].heatmap.png.startswith(b"\x89PNG")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_request_fails_only_its_own_response(shared_stub, case):
    """The field audit of ClassifyRequest (test_bad_input.CASES), each between two good ones:
    its response carries Classify's code and message, and its neighbours are answered."""
    fields, code, phrase = CASES[case]
    bad = pb.ClassifyRequest(**{"request_id": "bad", **with_input(case, fields)})
    responses = shared_stub.ClassifyBatch(
        batch(classify_request(request_id="first"), bad, classify_request(request_id="last")),
        timeout=20).responses
    assert [r.request_id for r in responses] == ["first", bad.request_id[:128], "last"]
    error = responses[1].error
    assert error.code == code.value[0], error
    assert phrase.lower() in error.message.lower(), error.message
    assert len(error.message) <= MAX_ERROR_CHARS and not responses[1].classes
    assert all(r.classes and not r.HasField("error") for r in (responses[0], responses[2]))


def test_good_and_bad_images_mixed_in_one_batch(shared_stub):
    requests = [classify_request(request_id="good-0"),
                classify_request(request_id="empty", image=b""),
                classify_request(request_id="good-1", image=image_bytes(1)),
                classify_request(request_id="garbage", image=bytes(range(256)) * 4),
                classify_request(request_id="too-large", image=OVER_IMAGE_LIMIT),
                classify_request(request_id="good-2", image=image_bytes(2))]
    responses = {r.request_id: r for r in
                 shared_stub.ClassifyBatch(batch(*requests), timeout=30).responses}
    assert list(responses) == [r.request_id for r in requests]
    for rid, phrase in [("empty", "empty"), ("garbage", "image"),
                        ("too-large", "bytes; the limit is 524,288")]:
        assert responses[rid].error.code == INVALID.value[0], rid
        assert phrase in responses[rid].error.message, responses[rid].error.message
    assert all(len(responses[f"good-{i}"].classes) == 5 for i in range(3))


def test_a_batch_of_only_bad_requests_is_ok_with_an_error_each(shared_stub):
    responses = shared_stub.ClassifyBatch(
        batch(pb.ClassifyRequest(image=b""), pb.ClassifyRequest(request_id="x" * 200)),
        timeout=20).responses
    assert [r.error.code for r in responses] == [INVALID.value[0]] * 2
    assert responses[1].request_id == "x" * 128  # refused as too long, so echoed clipped


def test_a_batch_whose_message_does_not_parse_is_refused_whole(shared_channel):
    """A request inside it that does not parse makes the whole message invalid: unlike in a
    stream, there is no other request to answer."""
    call = shared_channel.unary_unary("/sightline.classifier.v1.ImageClassifier/ClassifyBatch")
    with expect_error(INVALID, "not a valid message"):
        call(b"\x0a\x03\xff\xff\xff", timeout=10)


def test_an_empty_or_over_limit_batch_is_refused_naming_the_limit(shared_stub, repository,
                                                                  start_server):
    with expect_error(INVALID, "a batch holds 1 to 64 requests (max_request_images); got 0"):
        shared_stub.ClassifyBatch(batch(), timeout=10)
    with expect_error(INVALID, "1 to 64 requests (max_request_images); got 65"):
        shared_stub.ClassifyBatch(batch(*[pb.ClassifyRequest()] * 65), timeout=10)
    assert len(shared_stub.ClassifyBatch(batch(*[classify_request()] * 64),
                                         timeout=30).responses) == 64
    # As for OIP, the limit is capped at the queue's size: every batch accepted fits it.
    server = start_server(repository, max_queue_size=3)
    before = value(samples(scrape(server)), "sightline_requests_rejected_total",
                   reason="bad_input")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        assert len(stub.ClassifyBatch(batch(*[classify_request()] * 3), timeout=20).responses) == 3
        with expect_error(INVALID, "1 to 3 requests (max_request_images); got 4"):
            stub.ClassifyBatch(batch(*[classify_request()] * 4), timeout=10)
    # counted once, though no image of it reached the data plane (it was not counted before)
    assert value(samples(scrape(server)), "sightline_requests_rejected_total",
                 reason="bad_input") == before + 1


def test_a_batch_fills_one_dynamic_batch_and_counts_each_image(repository, start_server):
    """Submitted together, the good images make one interpreter call at once (max_batch_size
    reached, not the 5 s delay waited out); each image counts as a Classify would."""
    server = start_server(repository, max_batch_size=8, max_queue_delay_ms=5000.0,
                          wait_when_idle=True, workers=1)
    before = samples(scrape(server))
    requests = [classify_request(image=image_bytes(i)) for i in range(8)]
    requests.insert(3, classify_request(image=b""))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        started = time.monotonic()
        responses = pb_grpc.ImageClassifierStub(channel).ClassifyBatch(
            batch(*requests), timeout=30).responses
        assert time.monotonic() - started < 4.0
    assert [r.HasField("error") for r in responses] == [False] * 3 + [True] + [False] * 5
    after = samples(scrape(server))

    def added(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    version = {"model": MODEL, "version": "1"}
    assert added("sightline_batch_size_count", **version) == 1
    assert added("sightline_batch_size_sum", **version) == 8
    assert added("sightline_request_duration_seconds_count", stage="total", **version) == 8
    assert added("sightline_requests_rejected_total", reason="bad_input") == 1
    assert added("sightline_decode_failures_total", reason="empty") == 1
    labels = dict(zip(("grpc_type", "grpc_service", "grpc_method"), METHOD, strict=True))
    assert added("grpc_server_handled_total", grpc_code="OK", **labels) == 1
    assert added("grpc_server_msg_received_total", **labels) == 1
    assert released(server) and value(after, "sightline_in_flight_requests") == 0


@pytest.mark.parametrize("ending", ["cancelled", "deadline"])
def test_a_batch_that_ends_early_leaves_no_work_and_no_hold(repository, start_server, ending):
    """The batcher waits 1.5 s for company, so the requests are still queued when the client
    cancels, or its 0.5 s deadline passes: none of them runs, and every hold is given back."""
    server = start_server(repository, max_batch_size=64, max_queue_delay_ms=1500.0,
                          wait_when_idle=True, workers=1)
    batches = value(samples(scrape(server)), "sightline_batch_size_count", model=MODEL,
                    version="1")
    requests = batch(*[classify_request(image=image_bytes(i)) for i in range(48)])
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.ImageClassifierStub(channel).ClassifyBatch.future(
            requests, timeout=0.5 if ending == "deadline" else 30)
        if ending == "cancelled":
            servable = server.manager.get(MODEL)
            end = time.monotonic() + 10
            while not servable.holders and time.monotonic() < end:
                time.sleep(0.005)
            assert servable.holders > 0  # the server has the call
            call.cancel()
            with pytest.raises(grpc.FutureCancelledError):
                call.result()
        else:
            # The call ends DEADLINE_EXCEEDED; or, when the server's own wait ran out first,
            # each of its requests does.
            error = call.exception(timeout=10)
            codes = ({error.code()} if error is not None else
                     {CODES[r.error.code] for r in call.result().responses})
            assert codes <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    assert released(server, timeout=1.0)  # before the batcher's delay would have run them
    time.sleep(1.6)
    found = samples(scrape(server))
    assert value(found, "sightline_batch_size_count", model=MODEL, version="1") == batches
    assert value(found, "sightline_in_flight_requests") == 0
    labels = dict(zip(("grpc_type", "grpc_service", "grpc_method"), METHOD, strict=True))
    ended = {"cancelled": ["CANCELLED"], "deadline": ["DEADLINE_EXCEEDED", "OK"]}[ending]
    assert sum(value(found, "grpc_server_handled_total", grpc_code=code, **labels)
               for code in ended) == 1
