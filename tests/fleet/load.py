"""Client-side load for fleet tests: Classify calls sent on one channel, every call's status kept.

Every request is the same small PNG, so the servers' work per call is equal and counts compare.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence

import grpc

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.conftest import image_bytes

REQUEST = pb.ClassifyRequest(image=image_bytes(seed=7, size=32))
CALL_TIMEOUT = 10.0


def channel(target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """An insecure channel; ``grpc.use_local_subchannel_pool`` keeps it from sharing subchannels
    (connections) with other channels of this process, so each test's channels start fresh."""
    return grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1), *options])


def classify_many(channel: grpc.Channel, count: int, in_flight: int = 6) -> collections.Counter:
    """Send ``count`` Classify calls, at most ``in_flight`` at once; the statuses, counted."""
    classify = pb_grpc.ImageClassifierStub(channel).Classify
    statuses: collections.Counter = collections.Counter()
    pending: collections.deque = collections.deque()
    for _ in range(count):
        if len(pending) >= in_flight:
            statuses[status_of(pending.popleft())] += 1
        pending.append(classify.future(REQUEST, timeout=CALL_TIMEOUT))
    while pending:
        statuses[status_of(pending.popleft())] += 1
    return statuses


def status_of(future: grpc.Future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


class SteadyLoad:
    """``clients`` threads on one shared channel, each sending a call every ``interval`` seconds
    (closed loop: the next one leaves when the last has ended and the interval has passed).
    ``calls`` holds (sent, ended, status, details) for every call, failures included."""

    def __init__(self, channel: grpc.Channel, clients: int = 4, interval: float = 0.02):
        self.classify = pb_grpc.ImageClassifierStub(channel).Classify
        self.interval = interval
        self.calls: list[tuple[float, float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
                         for i in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT + 5)

    def _client(self) -> None:
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                self.classify(REQUEST, timeout=CALL_TIMEOUT)
                status, details = "OK", ""
            except grpc.RpcError as exc:
                status, details = exc.code().name, exc.details() or ""
            ended = time.monotonic()
            with self._lock:
                self.calls.append((sent, ended, status, details))
            self._stop.wait(max(0.0, self.interval - (ended - sent)))

    def statuses(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(status for _, _, status, _ in self.calls)

    def failures(self) -> list[tuple[float, str, str]]:
        """(seconds after the first call, status, details) of every call that failed."""
        with self._lock:
            start = self.calls[0][0] if self.calls else 0.0
            return [(round(sent - start, 3), status, details)
                    for sent, _, status, details in self.calls if status != "OK"]
