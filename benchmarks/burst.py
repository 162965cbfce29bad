"""Closed-loop load from threads, for the overload test and ``bench_overload.py``: what a burst
does to goodput, how fast refusals come, and whether clients that left were worked for.

``run(target, concurrency, seconds, deadline, request)`` runs ``concurrency`` threads, each
sending ``request`` back to back with ``deadline`` seconds, and returns a ``Phase``: how many
calls ended with which status, the OK calls per second, and the latencies of each status.
A refused call is retried after a short pause, as a client with backoff would.
``run_in_processes`` spreads the threads over several processes, so that the clients' own GIL
does not become what is measured (160 threads in one process made every call as slow as its
deadline, refusals included).
"""

from __future__ import annotations

import collections
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

CLASSIFY = "/sightline.classifier.v1.ImageClassifier/Classify"
BACKOFF_SECONDS = 0.1  # a client that backs off, as gRPC retry policies do


@dataclass
class Phase:
    concurrency: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))

    @property
    def goodput(self) -> float:
        """OK calls per second."""
        return len(self.latencies["OK"]) / self.seconds

    def count(self, status: str) -> int:
        return len(self.latencies.get(status, []))

    def p(self, status: str, q: float) -> float:
        values = self.latencies.get(status)
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> str:
        counts = ", ".join(f"{s} {len(v):,}" for s, v in sorted(self.latencies.items()))
        return (f"c={self.concurrency}: {self.goodput:,.0f} OK/s; {counts}; OK p50 "
                f"{self.p('OK', 50) * 1000:.1f} ms, p99 {self.p('OK', 99) * 1000:.1f} ms; "
                f"refusals p99 {self.p('RESOURCE_EXHAUSTED', 99) * 1000:.2f} ms")


def run(target: str, concurrency: int, seconds: float, deadline: float,
        request: bytes, start_at: float | None = None) -> Phase:
    """``start_at`` (time.time()): when the clients start, so that several processes' clients
    start together, after their imports and connections, none of which is timed."""
    phase = Phase(concurrency, seconds)
    start = threading.Barrier(concurrency + 1)
    ends = [0.0]

    def client(channel: grpc.Channel) -> None:
        call = channel.unary_unary(CLASSIFY)  # serialized once, by the caller
        start.wait()
        while (sent := time.monotonic()) < ends[0]:
            try:
                call(request, timeout=deadline)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
            phase.latencies[status].append(time.monotonic() - sent)
            if status != "OK":  # jittered, as gRPC's retry backoff is: no synchronised waves
                time.sleep(random.uniform(0, 2 * BACKOFF_SECONDS))

    channels = [grpc.insecure_channel(target) for _ in range(max(1, concurrency // 16))]
    for channel in channels:  # connected before the clients start: no handshake is timed
        grpc.channel_ready_future(channel).result(timeout=30)
    threads = [threading.Thread(target=client, args=(channels[i % len(channels)],))
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    ends[0] = time.monotonic() + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + deadline + 30)
    for channel in channels:
        channel.close()
    return phase


def _run_plain(args) -> dict[str, list[float]]:
    return dict(run(*args).latencies)


def run_in_processes(target: str, concurrency: int, seconds: float, deadline: float,
                     request: bytes | list[bytes], processes: int = 4,
                     lead: float = 3.0) -> Phase:
    """``run`` with the clients spread over ``processes`` spawned processes (not forked: gRPC
    does not survive a fork), all starting ``lead`` seconds from now, once spawned. A list of
    requests gives process i the i-th of them, round robin."""
    requests = request if isinstance(request, list) else [request]
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + lead
    with context.Pool(processes) as pool:
        parts = pool.map(_run_plain, [(target, n, seconds, deadline,
                                       requests[i % len(requests)], start_at)
                                      for i, n in enumerate(shares) if n])
    phase = Phase(concurrency, seconds)
    for part in parts:
        for status, latencies in part.items():
            phase.latencies[status].extend(latencies)
    return phase
