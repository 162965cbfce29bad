"""grpc.health.v1 on a real server: Check, Watch updates in order and only on change, shutdown
for good, and no deadlock when watchers leave while statuses change."""

import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.api.health import Health
from tests.serving.conftest import expect_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.fixture
def served():
    """(Health, channel) on a loopback server."""
    health = Health()
    server = grpc.server(futures.ThreadPoolExecutor(16))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield health, channel
    server.stop(0).wait(5)


def watch(channel, service: str = ""):
    return health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=30)


def check(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_check_answers_each_service_and_not_found_names_the_unknown_one(served):
    health, channel = served
    health.set("sightline.Api", NOT_SERVING)
    assert check(channel) == SERVING and check(channel, "sightline.Api") == NOT_SERVING
    with expect_error(grpc.StatusCode.NOT_FOUND, "unknown service 'nope'"):
        check(channel, "nope")


def test_a_watch_sees_each_change_once_and_in_order(served):
    health, channel = served
    stream = watch(channel, "a")
    assert next(stream).status == UNKNOWN
    for status in (SERVING, SERVING, NOT_SERVING, NOT_SERVING, SERVING):
        health.set("a", status)
    health.enter_graceful_shutdown()
    health.set("a", SERVING)  # ignored from now on
    assert [next(stream).status for _ in range(3)] == [SERVING, NOT_SERVING, SERVING]
    assert next(stream).status == NOT_SERVING
    assert check(channel, "a") == NOT_SERVING and check(channel) == NOT_SERVING
    stream.cancel()


def test_a_watch_for_a_huge_service_name_is_refused_and_holds_nothing(served):
    health, channel = served
    stream = watch(channel, "x" * 100_000)
    with expect_error(grpc.StatusCode.INVALID_ARGUMENT, "at most 256 characters; this one has "
                      "100,000"):
        next(stream)
    assert health._watchers == {}


def test_watchers_that_leave_are_forgotten(served):
    health, channel = served
    streams = [watch(channel, f"made-up-{i}") for i in range(20)]
    for stream in streams:
        next(stream)
        stream.cancel()
    deadline = time.monotonic() + 5
    while health._watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health._watchers == {}


def cancel_all(streams) -> None:
    for stream in streams:
        stream.cancel()


def flip_statuses(health: Health) -> None:
    for i in range(40):
        health.set("", SERVING if i % 2 else NOT_SERVING)


def test_statuses_change_while_watchers_leave_and_nothing_hangs(served):
    """The defect (grpc_health's servicer): a send under the servicer's lock waited for gRPC's
    polling thread, which waited for that lock to forget a cancelled watcher. The server hung;
    with grpc_health's HealthServicer this test hangs within a few rounds."""
    health, channel = served
    for _ in range(30):
        streams = [watch(channel) for _ in range(20)]
        for stream in streams:
            next(stream)
        leaving = threading.Thread(target=cancel_all, args=(streams,))
        flipping = threading.Thread(target=flip_statuses, args=(health,), daemon=True)
        leaving.start()
        flipping.start()
        flipping.join(10)
        leaving.join(10)
        assert not flipping.is_alive(), "set() hung while watchers were leaving"
    assert check(channel) in (SERVING, NOT_SERVING)
