"""The metrics a real server exports after real traffic, checked by name and value, by promtool,
and for bounded cardinality under fuzzed input."""

import shutil
import subprocess
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.conftest import MODEL, classify_request, image_bytes, samples, scrape, value


def test_traffic_is_counted_by_method_code_stage_class_and_reason(server, stub):
    for i in range(5):
        stub.Classify(classify_request(image=image_bytes(i)), timeout=10)
    stub.Classify(classify_request(explain=pb.ExplainRequest(png_overlay=True)), timeout=10)
    for bad in (b"", b"garbage bytes"):
        with pytest.raises(grpc.RpcError):
            stub.Classify(pb.ClassifyRequest(image=bad), timeout=10)
    list(stub.ClassifyStream(iter([classify_request(), classify_request()]), timeout=10))
    found = samples(scrape(server))
    unary = {"grpc_type": "unary", "grpc_service": "sightline.classifier.v1.ImageClassifier",
             "grpc_method": "Classify"}
    assert value(found, "grpc_server_started_total", **unary) == 8
    assert value(found, "grpc_server_handled_total", grpc_code="OK", **unary) == 6
    assert value(found, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **unary) == 2
    assert value(found, "grpc_server_handling_seconds_count", **unary) == 8
    stream = {**unary, "grpc_type": "bidi_stream", "grpc_method": "ClassifyStream"}
    assert value(found, "grpc_server_msg_received_total", **stream) == 2
    assert value(found, "grpc_server_msg_sent_total", **stream) == 2
    assert value(found, "grpc_server_handled_total", grpc_code="OK", **stream) == 1
    assert value(found, "sightline_request_duration_seconds_count", model=MODEL, version="1",
                 stage="total") == 8
    assert value(found, "sightline_request_duration_seconds_count", model=MODEL, version="1",
                 stage="explain") == 1
    assert value(found, "sightline_request_duration_seconds_bucket", model=MODEL, version="1",
                 stage="total", le="0.1") >= 1  # the SLO is a bucket boundary
    predictions = sum(v for (name, _), v in found.items() if name == "sightline_predictions_total")
    assert predictions == 8
    assert value(found, "sightline_prediction_confidence_count", model=MODEL, version="1") == 8
    assert value(found, "sightline_decode_failures_total", reason="empty") == 1
    assert value(found, "sightline_decode_failures_total", reason="unknown_format") == 1
    assert value(found, "sightline_requests_rejected_total", reason="bad_input") == 2
    assert value(found, "sightline_in_flight_requests") == 0
    assert value(found, "sightline_batch_size_count", model=MODEL, version="1") >= 1
    assert value(found, "sightline_model_loaded", model=MODEL) == 1
    assert value(found, "sightline_model_loads_total", model=MODEL, result="success") == 1
    assert value(found, "sightline_queue_capacity", model=MODEL, version="1") == 256
    assert value(found, "sightline_input_bytes_count", model=MODEL, version="1") == 8
    info = [labels for (name, labels), v in found.items() if name == "sightline_model_info"]
    assert len(info) == 1 and dict(info[0])["version"] == "1" and dict(info[0])["variant"] == "int8"
    assert value(found, "sightline_drift_window_size", model=MODEL, version="1") == 8
    drift = value(found, "sightline_drift_psi", model=MODEL, version="1", signal="class_mix")
    assert drift == 0  # fewer than min_samples
    assert value(found, "process_resident_memory_bytes") > 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: apt prometheus")
def test_promtool_finds_nothing_wrong_with_a_live_scrape(server, stub):
    stub.Classify(classify_request(), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(image=b"x"), timeout=10)
    done = subprocess.run(["promtool", "check", "metrics"], input=scrape(server),
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "" and done.stderr.strip() == "", \
        done.stdout + done.stderr


def test_fuzzed_names_and_metadata_do_not_grow_the_series(server, stub):
    def series() -> int:
        return len(samples(scrape(server)))

    stub.Classify(classify_request(), timeout=10)
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(image=b"warm-up garbage"), timeout=10)
    before = series()
    for i in range(200):
        fuzz = f"fuzz-{i}-\u00e9\n{i * 7919}"
        request = classify_request(request_id=fuzz, model=pb.ModelSpec(
            name=fuzz if i % 3 else "", label=fuzz if i % 3 == 1 else "",
            version=i if i % 3 == 2 else 0))
        metadata = [(f"x-fuzz-{i}", fuzz.replace("\n", " "))]
        try:
            stub.Classify(request, timeout=10, metadata=metadata)
        except grpc.RpcError:
            pass
    after = series()
    # Only a bounded set may appear (NOT_FOUND codes, unknown_model rejections): never per name.
    assert after - before <= 10, after - before
    assert after < 1500


def test_a_stream_ended_by_an_oversized_message_is_not_counted_ok(repository, start_server):
    """gRPC refuses a message over max_message_bytes and ends the stream under the handler;
    the handler used to return normally, and the stream was counted as grpc_code="OK"."""
    server = start_server(repository, max_image_bytes=256 * 1024, max_message_bytes=512 * 1024)
    answered = threading.Event()

    def requests():  # the oversized one only once the first is answered: nothing is in flight
        yield classify_request()
        answered.wait(10)
        yield pb.ClassifyRequest(image=b"\0" * (600 * 1024))

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            for response in stub.ClassifyStream(requests(), timeout=10):
                assert response.classes
                answered.set()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    labels = dict(grpc_type="bidi_stream", grpc_service="sightline.classifier.v1.ImageClassifier",
                  grpc_method="ClassifyStream")
    for _ in range(50):  # the handler finishes just after the client saw the status
        found = samples(scrape(server))
        if value(found, "grpc_server_handled_total", grpc_code="CANCELLED", **labels):
            break
        time.sleep(0.1)
    handled = {k: v for k, v in found.items() if k[0] == "grpc_server_handled_total"
               and ("grpc_method", "ClassifyStream") in k[1] and v}
    assert value(found, "grpc_server_handled_total", grpc_code="CANCELLED", **labels) == 1, \
        handled
    assert value(found, "grpc_server_handled_total", grpc_code="OK", **labels) == 0


def test_every_histogram_has_each_bucket_once(server, stub):
    """A bound listed twice is exported as two series of one name and labels (input_bytes had
    16 MiB twice), which Prometheus refuses and a merge of processes counts twice."""
    stub.Classify(classify_request(), timeout=10)
    buckets = [(s.name, tuple(sorted(s.labels.items())))
               for family in text_string_to_metric_families(scrape(server))
               for s in family.samples if s.name.endswith("_bucket")]
    assert len(buckets) > 20 and len(buckets) == len(set(buckets))
