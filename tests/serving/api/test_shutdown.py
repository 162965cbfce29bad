"""SIGTERM under real concurrent load, on a server in its own process: health turns NOT_SERVING
first and the server keeps answering for the drain delay; then new calls are refused with
UNAVAILABLE; every call in flight finishes; the process exits 0. Every request's status and
the health seen every 50 ms are recorded, and the order is checked from them."""

import collections
import random
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monitoring.local_prometheus import free_port
from serving.api.admission import Admission
from serving.api.server import create_server
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.conftest import ROOT
from tests.serving.conftest import classify_request, with_settings

DRAIN = 1.5  # seconds of NOT_SERVING while still serving
CLIENTS = 16


class Load:
    """CLIENTS closed-loop unary clients, one stream sending every 10 ms, a health prober."""

    def __init__(self, port: int):
        self.target = f"127.0.0.1:{port}"
        self.stop = threading.Event()
        self.calls: list[tuple[float, float, str]] = []  # (sent, ended, status)
        self.health: list[tuple[float, str]] = []
        self.stream_sent: list[float] = []
        self.stream_responses: list = []
        self.stream_status: list[grpc.RpcError] = []
        self.threads = [threading.Thread(target=self._client) for _ in range(CLIENTS)]
        self.threads += [threading.Thread(target=self._prober),
                         threading.Thread(target=self._stream)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self):
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    stub.Classify(classify_request(), timeout=10)
                    status = "OK"
                except grpc.RpcError as exc:
                    status = exc.code().name
                self.calls.append((sent, time.monotonic(), status))
                if status != "OK":
                    time.sleep(0.02)

    def _prober(self):
        with grpc.insecure_channel(self.target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while not self.stop.is_set():
                seen = time.monotonic()
                try:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                        check(health_pb2.HealthCheckRequest(), timeout=1).status)
                except grpc.RpcError as exc:
                    status = exc.code().name
                self.health.append((seen, status))
                time.sleep(0.05)

    def _stream(self):
        def requests():
            while not self.stop.is_set():
                self.stream_sent.append(time.monotonic())
                yield classify_request(request_id=str(len(self.stream_sent)))
                time.sleep(0.01)

        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            try:
                for response in stub.ClassifyStream(requests(), timeout=60):
                    self.stream_responses.append(response)
            except grpc.RpcError as exc:
                self.stream_status.append(exc)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_drains_then_refuses_then_finishes_every_call_in_flight(deployable, processes):
    """With 2 processes the supervisor forwards the signal: both drain at once, as one."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-dir", str(deployable("gap")),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
         "--drain-seconds", str(DRAIN), "--grace-seconds", "10",
         "--processes", str(processes)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    load = Load(port)
    try:
        with grpc.insecure_channel(load.target) as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            stub.Classify(classify_request(), timeout=60, wait_for_ready=True)
        load.start()
        time.sleep(1.0)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        exited = time.monotonic() - signalled
        time.sleep(0.2)
    finally:
        load.finish()
        process.kill()
        stderr = process.stderr.read()
    drain_end = signalled + DRAIN

    in_flight = collections.Counter(s for sent, ended, s in load.calls if sent < signalled < ended)
    during_drain = collections.Counter(s for sent, _, s in load.calls
                                       if signalled <= sent < drain_end - 0.05)
    assert sum(in_flight.values()) >= CLIENTS - 2 and set(in_flight) == {"OK"}, in_flight
    assert during_drain["OK"] > 50 and set(during_drain) == {"OK"}, during_drain
    # nothing sent before the drain ended was cancelled; later calls are refused, retryably
    cancelled = [(round(sent - signalled, 3), round(ended - signalled, 3))
                 for sent, ended, s in load.calls if sent < drain_end and s == "CANCELLED"]
    assert not cancelled, (cancelled, stderr[-2000:])
    refused = [sent for sent, _, s in load.calls if s != "OK"]
    assert refused and min(refused) >= drain_end - 0.05

    after = [(seen - signalled, status) for seen, status in load.health if seen >= signalled]
    first_not_serving = next(t for t, status in after if status == "NOT_SERVING")
    assert first_not_serving < 0.2, after
    assert all(status == "NOT_SERVING" for t, status in after
               if first_not_serving <= t < DRAIN - 0.05), after
    assert "SERVING" not in {status for t, status in after if t >= first_not_serving}

    # the stream: every request sent before the drain ended was answered, none with an error;
    # then it ended with UNAVAILABLE, so its client knows to resend the rest elsewhere
    sent_before = sum(1 for t in load.stream_sent if t < drain_end - 0.05)
    assert len(load.stream_responses) >= sent_before > 50
    assert all(r.classes and not r.HasField("error") for r in load.stream_responses)
    assert [e.code() for e in load.stream_status] == [grpc.StatusCode.UNAVAILABLE]
    assert "shutting down" in load.stream_status[0].details()

    assert DRAIN <= exited < DRAIN + 5
    assert stderr.count("serving on for 1.5s") == stderr.count("stopped") == processes


def test_a_second_signal_cuts_the_drain_delay_short(deployable):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-dir", str(deployable("gap")),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
         "--drain-seconds", "60"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pb_grpc.ImageClassifierStub(channel).Classify(classify_request(), timeout=60,
                                                          wait_for_ready=True)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"no exit 20 s after the second signal:\n"
                                 f"{process.stderr.read()[-3000:]}") from None
        assert code == 0 and time.monotonic() - signalled < 5
    finally:
        process.kill()
        process.stderr.read()


def test_quiet_is_counted_from_the_wait_not_from_the_last_refusal():
    """A call can reach gRPC just before the close and be handed to the interceptor only a
    moment later; waiting for quiet must cover that moment even when nothing was refused yet."""
    admission = Admission(max_unary=4, max_streams=4)
    admission.close()
    started = time.monotonic()
    assert admission.wait_quiet(0.1, timeout=1.0)
    assert time.monotonic() - started >= 0.1


def test_clients_that_leave_at_their_first_refusal_never_see_cancelled(server):
    """Sparse clients, each going elsewhere at its first UNAVAILABLE (as a client that retries
    on another replica does), across many shutdowns: no call ends CANCELLED. Before the fix,
    a call sent as the drain ended was cancelled in about one shutdown in eight."""
    statuses = collections.Counter()
    for shutdown in range(12):
        current = server if shutdown == 0 else create_server(with_settings(server), port=0)
        if shutdown:
            current.start()
        statuses += _sparse_clients_across_a_shutdown(current, seed=shutdown)
    assert statuses["OK"] > 100 and set(statuses) <= {"OK", "UNAVAILABLE"}, statuses


def _sparse_clients_across_a_shutdown(server, seed: int, clients: int = 6):
    statuses = []
    target = f"127.0.0.1:{server.port}"

    def client(rng):
        with grpc.insecure_channel(target) as channel:
            classify = pb_grpc.ImageClassifierStub(channel).Classify
            while True:
                try:
                    classify(classify_request(), timeout=5)
                    statuses.append("OK")
                except grpc.RpcError as exc:
                    statuses.append(exc.code().name)
                    return
                time.sleep(rng.uniform(0, 0.03))

    threads = [threading.Thread(target=client, args=(random.Random(seed * clients + i),))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    server.stop(grace=5, drain=0.3)
    for thread in threads:
        thread.join(10)
    return collections.Counter(statuses)
