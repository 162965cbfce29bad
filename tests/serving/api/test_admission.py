"""Admission on a real server: idle streams cannot take the handler threads, health checks always
answer, and calls over the limits get a fast RESOURCE_EXHAUSTED naming the limit."""

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.api.admission import HEALTH_SLOTS, Admission, AdmittedExecutor, expected_wait
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
    admission = Admission(2, 1, on_refused=refused.append)
    server = grpc.server(AdmittedExecutor(admission), interceptors=[admission],
                         maximum_concurrent_rpcs=admission.threads)
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
        assert time.perf_counter() - started < 0.5 and refused == ["busy"]
        for _ in range(20):  # health is never counted nor refused
            assert check_health(channel) < 0.5
        release.set()
        assert [f.result() for f in held] == [b"done", b"done"]
        assert wait(b"", timeout=10) == b"done"  # the slots came back


def test_health_watch_streams_hold_no_slot(repository, start_server):
    """Health/Watch is answered by callback: many open watches leave streams and checks be."""
    server = start_server(repository, max_streams=2)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health_stub = health_pb2_grpc.HealthStub(channel)
        watches = []
        for _ in range(20):
            watches.append(health_stub.Watch(health_pb2.HealthCheckRequest(), timeout=30))
            assert next(watches[-1]).status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.ImageClassifierStub(channel)
        for _ in range(2):
            assert len(list(stub.ClassifyStream(iter([classify_request()]), timeout=10))) == 1
        assert check_health(channel) < 0.5
        for watch in watches:
            watch.cancel()


def half_calls(channel, method: str, count: int, stop: threading.Event):
    """``count`` calls that send their headers and never their request message."""
    call = channel.stream_unary(method, request_serializer=lambda x: x,
                                response_deserializer=lambda x: x)
    return [call.future(idle_requests(stop), timeout=60) for _ in range(count)]


def test_calls_that_never_send_their_message_cannot_hang_the_server(repository, start_server):
    """The defect: 184 calls sending headers only held every handler thread (admission counted
    a call only once its message came), and Health/Check timed out."""
    server = start_server(repository, grpc_threads=8, max_streams=4)
    stop = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        try:
            held = half_calls(channel, "/sightline.classifier.v1.ImageClassifier/Classify", 300,
                              stop)
            time.sleep(1.0)
            assert check_health(channel) < 0.5  # its own slots: unary calls cannot take them
            stub = pb_grpc.ImageClassifierStub(channel)
            started = time.perf_counter()
            with expect_error(EXHAUSTED, "limit of 8 unary calls in flight"):
                stub.Classify(classify_request(), timeout=5)
            assert time.perf_counter() - started < 0.5
            assert len(list(stub.ClassifyStream(iter([classify_request()]), timeout=10))) == 1
            probes = half_calls(channel, "/grpc.health.v1.Health/Check", 50, stop)
            time.sleep(0.5)
            started = time.perf_counter()  # half health checks: refused fast, never a hang
            with expect_error(EXHAUSTED, f"limit of {HEALTH_SLOTS} health calls"):
                check_health(channel)
            assert time.perf_counter() - started < 0.5
        finally:
            stop.set()
        for call in held + probes:
            call.cancel()
        time.sleep(0.5)  # every slot comes back
        assert check_health(channel) < 0.5
        assert stub.Classify(classify_request(), timeout=5).classes
        assert server.admission.wait_idle(1.0)  # the last call gives its slot back as it ends


@pytest.mark.parametrize(("calls", "interval", "expected"), [
    (1, 0.01, 0.0),  # alone: nothing to wait for
    (2, None, 0.0),  # not measured yet
    (2, 0.01, 0.02), (40, 0.005, 0.2),
])
def test_expected_wait_is_littles_law_when_busy(calls, interval, expected):
    assert expected_wait(calls, interval, busy_calls=2) == pytest.approx(expected)


def test_a_call_that_would_miss_its_deadline_is_refused_at_once():
    """A method that serves one call at a time, 20 ms each: with 20 calls in flight a new one
    waits ~0.4 s, so one with a 0.1 s deadline is refused at once, and one with 5 s is served.
    With half the deadline as the most a call may expect to wait, 0.6 s is refused too."""
    lock, refused, stop = threading.Lock(), [], threading.Event()

    def serve_one(request, context):
        with lock:
            time.sleep(0.02)
        return b"done"

    admission = Admission(64, 4, on_refused=refused.append, wait_share=0.5)
    server = grpc.server(AdmittedExecutor(admission), interceptors=[admission],
                         maximum_concurrent_rpcs=admission.threads)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Slow", {
        "Serve": grpc.unary_unary_rpc_method_handler(serve_one)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Slow/Serve")

            def client():
                while not stop.is_set():
                    call(b"", timeout=30)

            clients = [threading.Thread(target=client) for _ in range(20)]
            for thread in clients:
                thread.start()
            time.sleep(2.0)  # ~100 completions while busy: the interval is measured
            assert admission.interval == pytest.approx(0.02, rel=0.5)
            started = time.perf_counter()
            with expect_error(EXHAUSTED, "more than 50% of the"):
                call(b"", timeout=0.1)
            assert time.perf_counter() - started < 0.05
            with expect_error(EXHAUSTED, "ms its deadline leaves (admit_wait_share); retry"):
                call(b"", timeout=0.6)  # ~0.4 s is more than half of 0.6 s
            # decided before the request message is read: a call that never sends it is
            # refused at once too, where it used to wait out its deadline
            half = channel.stream_unary("/test.Slow/Serve")
            no_message = threading.Event()
            started = time.perf_counter()
            with expect_error(EXHAUSTED, "more than 50% of the"):
                half(idle_requests(no_message), timeout=0.2)
            assert time.perf_counter() - started < 0.1
            no_message.set()
            assert refused == ["would_miss_deadline"] * 3
            assert call(b"", timeout=5) == b"done"
            stop.set()
            for thread in clients:
                thread.join(10)
            with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "no request message came for "
                              "/test.Slow/Serve"):
                half(iter(()), timeout=5)  # closed without sending one
    finally:
        stop.set()
        server.stop(1).wait()


def test_open_health_watches_are_bounded_and_their_slots_come_back():
    """Watch needs no token and stays open (about 19 KB each): 1,817 opened in 4 s took 34 MB
    with nothing bounding them. Past max_watches a new one is refused at once."""
    admission = Admission(2, 1, max_watches=3)
    server = grpc.server(AdmittedExecutor(admission), interceptors=[admission],
                         maximum_concurrent_rpcs=admission.threads)
    health_pb2_grpc.add_HealthServicer_to_server(
        health.HealthServicer(experimental_non_blocking=True), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = []
            for _ in range(3):
                watches.append(stub.Watch(health_pb2.HealthCheckRequest(), timeout=30))
                assert next(watches[-1]).status == health_pb2.HealthCheckResponse.SERVING
            with expect_error(EXHAUSTED, "limit of 3 Health/Watch streams open"):
                next(stub.Watch(health_pb2.HealthCheckRequest(), timeout=30))
            assert check_health(channel) < 0.5  # checks are not watches
            watches.pop().cancel()
            deadline = time.monotonic() + 5
            while admission.watches.used > 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            again = stub.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(again).status == health_pb2.HealthCheckResponse.SERVING
            for watch in [*watches, again]:
                watch.cancel()
    finally:
        server.stop(1).wait()
