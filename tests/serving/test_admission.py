"""Admission on a real server: idle streams cannot take the handler threads, health checks always
answer, and calls over the limits get a fast RESOURCE_EXHAUSTED naming the limit."""

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.admission import WATCH_SLOTS, Admission, pool_size
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.conftest import classify_request, expect_error

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def idle_requests(stop: threading.Event):
    """A client that opens a stream and sends nothing until told to stop."""
    stop.wait()
    yield from ()


def outcome(call) -> tuple[str, str, float]:
    """(status name, details, seconds) of a streaming call, once it ends."""
    started = time.perf_counter()
    try:
        for _ in call:
            pass
        return "OK", "", time.perf_counter() - started
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or "", time.perf_counter() - started


def check_health(channel, timeout: float = 2.0) -> float:
    started = time.perf_counter()
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=timeout).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    return time.perf_counter() - started


def test_128_idle_streams_leave_health_and_classify_answering(repository, start_server):
    """The defect: 128 idle ClassifyStreams took all 128 handler threads, and Health/Check and
    Classify timed out. Now streams past max_streams (32) are refused at once."""
    server = start_server(repository)  # the default limits
    stop = threading.Event()
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(4)]
    calls = [pb_grpc.ImageClassifierStub(channels[i % 4]).ClassifyStream(
        idle_requests(stop), timeout=60) for i in range(128)]
    pool = futures.ThreadPoolExecutor(len(calls))
    try:
        ended = [pool.submit(outcome, call) for call in calls]
        time.sleep(1.0)  # every stream reached the server
        assert check_health(channels[0]) < 0.5
        stub = pb_grpc.ImageClassifierStub(channels[1])
        assert stub.Classify(classify_request(), timeout=2).classes
        refused = [f.result() for f in ended if f.done()]
        assert len(refused) == 128 - server.config.max_streams
        assert all(code == EXHAUSTED.name and "max_streams" in details and seconds < 1.0
                   for code, details, seconds in refused)
        stop.set()
        assert [f.result()[0] for f in ended].count("OK") == server.config.max_streams
    finally:
        stop.set()  # before waiting for the streams, or a failure above would wait 60 s
        for call in calls:
            call.cancel()
        pool.shutdown()
        for channel in channels:
            channel.close()


def test_idle_streams_are_closed_and_their_slots_reused(repository, start_server):
    server = start_server(repository, max_streams=3, stream_idle_seconds=1.0)
    stop = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        calls = [stub.ClassifyStream(idle_requests(stop), timeout=30) for _ in range(3)]
        with futures.ThreadPoolExecutor(3) as pool:
            ended = list(pool.map(outcome, calls))
        stop.set()
        for code, details, seconds in ended:
            assert code == "DEADLINE_EXCEEDED" and "stream_idle_seconds" in details
            assert 0.9 < seconds < 5.0
        # the slots came back: a new stream is served
        responses = list(stub.ClassifyStream(iter([classify_request()] * 2), timeout=10))
        assert len(responses) == 2 and all(r.classes for r in responses)


def test_a_stream_that_keeps_sending_is_not_idle(repository, start_server):
    server = start_server(repository, stream_idle_seconds=0.5)

    def slow_requests():
        for i in range(4):
            time.sleep(0.3 if i else 0)
            yield classify_request(request_id=str(i))

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ImageClassifierStub(channel)
        ids = [r.request_id for r in stub.ClassifyStream(slow_requests(), timeout=20)]
    assert sorted(ids) == ["0", "1", "2", "3"]


@pytest.fixture
def blocking_server():
    """A bare gRPC server with Admission (2 unary calls, 1 stream) and a method that blocks until
    released, beside the health service."""
    release = threading.Event()
    refused = []
    handlers = grpc.method_handlers_generic_handler("test.Slow", {
        "Wait": grpc.unary_unary_rpc_method_handler(lambda request, context: release.wait(20)
                                                    and b"done"),
    })
    server = grpc.server(futures.ThreadPoolExecutor(pool_size(2, 1)),
                         interceptors=[Admission(2, 1, on_refused=refused.append)])
    server.add_generic_rpc_handlers((handlers,))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, release, refused
    release.set()
    server.stop(1).wait()


def test_unary_calls_over_the_limit_are_refused_fast_and_health_answers(blocking_server):
    port, release, refused = blocking_server
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        wait = channel.unary_unary("/test.Slow/Wait")
        held = [wait.future(b"", timeout=30) for _ in range(2)]
        time.sleep(0.5)  # both are running, each holding a slot
        started = time.perf_counter()
        with expect_error(EXHAUSTED, "limit of 2 unary calls in flight (grpc_threads)"):
            wait(b"", timeout=10)
        assert time.perf_counter() - started < 0.5 and refused == ["unary"]
        for _ in range(20):  # health is never counted nor refused
            assert check_health(channel) < 0.5
        release.set()
        assert [f.result() for f in held] == [b"done", b"done"]
        assert wait(b"", timeout=10) == b"done"  # the slots came back


def test_health_watch_streams_cannot_crowd_out_classify_streams(repository, start_server):
    """Health/Watch needs no token and stays open: it gets slots of its own."""
    server = start_server(repository, max_streams=2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health_stub = health_pb2_grpc.HealthStub(channel)
        watches = [health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
                   for _ in range(WATCH_SLOTS)]
        assert all(next(w).status == health_pb2.HealthCheckResponse.SERVING for w in watches)
        with expect_error(EXHAUSTED, f"limit of {WATCH_SLOTS} Health/Watch streams"):
            next(health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=30))
        stub = pb_grpc.ImageClassifierStub(channel)
        for _ in range(2):
            assert len(list(stub.ClassifyStream(iter([classify_request()]), timeout=10))) == 1
        assert check_health(channel) < 0.5
        for watch in watches:
            watch.cancel()
