"""A dynamic batcher: single-image requests in, model-sized batches out, run on worker threads.

Who calls it: gRPC handler threads ``submit`` one image each and block on the returned Future;
``workers`` threads, each with its own runner (a TFLite interpreter is not thread-safe), pull
batches and run them. The idea is Triton's / TF Serving's: wait a little for company, since one
call on N images costs far less than N calls on one.

What it guarantees:
- A batch holds jobs of one ``kind`` only, at most ``max_batch_size`` of them, in submit order.
  A worker takes the kind of the oldest queued job and waits for more of that kind until the
  batch is full or ``max_queue_delay_s`` has passed since that oldest job was *enqueued* (a job
  that already waited behind a busy worker is not made to wait again). Other kinds keep their
  place, so no kind starves. With a delay of 0 a lone job runs as soon as a worker is free.
- Waiting only pays while another batch is running: when none is (an idle server), the worker
  runs what is queued at once, unless ``wait_when_idle`` asks for Triton's and TF Serving's
  classic behaviour of always waiting out the delay. Measured on the CIFAR-10 int8 model at
  concurrency 1 (docs/benchmarks.md), waiting when idle put ~3 ms on every request's p50.
- A cancelled job never reaches the runner; one past its deadline, or so close to it that its
  batch would end after it (by the running average of that kind's batch times), fails with
  ``DeadlineExpired`` instead of running: no work for clients that have left. A result that is
  ready only after its deadline all the same is counted (``on_late``). ``job.started`` is set
  when its batch starts.
- ``runner(kind, jobs)`` returns one result per job, in order; if it raises (or returns the
  wrong count), every job of that batch gets the exception, and the worker carries on.
- ``submit`` never blocks on the queue: a full queue raises ``QueueFull`` at once, so the server
  sheds load instead of piling up threads.

Hot path: one lock, two Conditions on it (idle workers; workers gathering a batch) and a deque
per kind; a submit wakes at most one thread, and only when that wake-up is useful.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.batching.policy import BatchPolicy

__all__ = ["BatcherClosed", "DeadlineExpired", "DynamicBatcher", "Job", "QueueFull", "Runner"]

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """``max_queue_size`` jobs are already waiting (the server answers RESOURCE_EXHAUSTED)."""


class DeadlineExpired(Exception):
    """The job's deadline passed before it could run (the server answers DEADLINE_EXCEEDED)."""


class BatcherClosed(Exception):
    """``close()`` has begun, or dropped this job (the server answers UNAVAILABLE)."""


@dataclass(slots=True)
class Job:
    kind: str  # batches never mix kinds, e.g. "classify" vs "explain"
    inputs: np.ndarray  # one item, e.g. (H, W, 3)
    target: Any  # passed through to the runner: for Sightline (target class or None, method)
    deadline: float | None  # time.monotonic() seconds; None = no deadline
    future: Future
    enqueued: float  # time.monotonic() at submit
    started: float | None = None  # when its batch started running (queue time = started - enqueued)


Runner = Callable[[str, list[Job]], Sequence[Any]]


class DynamicBatcher:
    def __init__(self, make_runner: Callable[[], Runner], policy: BatchPolicy | None = None, *,
                 name: str = "batcher"):
        """Start ``policy.workers`` threads; each calls ``make_runner()`` itself, so each builds
        its own interpreter. Returns once every runner is built; if one fails, raises its error."""
        policy = policy or BatchPolicy()
        self.name = name
        self.on_batch: Callable[[str, int], None] | None = None  # metrics hook: (kind, size)
        self.on_late: Callable[[str, int], None] | None = None  # (kind, results past deadline)
        self.batch_seconds: dict[str, float] = {}  # kind -> running average of a batch's time
        self._make_runner = make_runner
        self.policy = policy
        self._max_batch = policy.max_batch_size
        self._delay = policy.max_queue_delay_s
        self._max_queue = policy.max_queue_size
        self._wait_when_idle = policy.wait_when_idle
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # workers looking for a kind to batch
        self._gathering = threading.Condition(self._lock)  # workers waiting for a batch to fill
        self._queues: dict[str, deque[Job]] = {}  # kind -> its waiting jobs; never an empty deque
        self._claimed: set[str] = set()  # kinds a worker is gathering; other workers skip them
        self._depth = 0
        self._in_flight = 0
        self._closing = False
        ready = [Future() for _ in range(policy.workers)]
        self._threads = [threading.Thread(target=self._work, args=(r,), name=f"{name}-{i}",
                                          daemon=True) for i, r in enumerate(ready)]
        for thread in self._threads:
            thread.start()
        errors = [e for e in (r.exception() for r in ready) if e is not None]
        if errors:
            self.close(drain=False)
            raise errors[0]

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a batch (cancelled ones included until a worker drops them)."""
        return self._depth

    @property
    def capacity(self) -> int:
        """The most jobs that may wait (max_queue_size)."""
        return self._max_queue

    @property
    def in_flight(self) -> int:
        """Jobs submitted whose future the batcher has not yet resolved."""
        return self._in_flight

    def submit(self, kind: str, inputs, target: Any = None,
               deadline: float | None = None) -> Future:
        """Queue one item; the Future resolves to the runner's result for it, or an exception.
        Never waits for room: raises
        ``DeadlineExpired``, ``BatcherClosed`` or ``QueueFull`` at once instead."""
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExpired(f"{self.name}: deadline passed {now - deadline:.6f}s ago")
        job = Job(kind, inputs, target, deadline, Future(), now)
        with self._lock:
            if self._closing:
                raise BatcherClosed(f"{self.name} is closed")
            if self._depth >= self._max_queue:
                raise QueueFull(f"{self.name}: {self._depth} jobs queued, max_queue_size "
                                f"{self._max_queue}")
            queue = self._queues.get(kind)
            if queue is None:
                queue = self._queues[kind] = deque()
            queue.append(job)
            self._depth += 1
            self._in_flight += 1
            if kind not in self._claimed:
                self._idle.notify()
            elif len(queue) >= self._max_batch:
                self._gathering.notify_all()
        return job.future

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting jobs. ``drain``: run every queued job first, without waiting out the
        delay; else fail queued jobs with ``BatcherClosed`` (running batches still finish).
        Idempotent, so ``close(drain=True, timeout=t)`` then ``close(drain=False)`` works."""
        with self._lock:
            self._closing = True
            dropped = [] if drain else self._take_all()
            self._idle.notify_all()
            self._gathering.notify_all()
        for job in dropped:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed(f"{self.name} closed before this job ran"))
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("%s: workers still running after close(timeout=%s): %s",
                           self.name, timeout, alive)

    def _work(self, ready: Future) -> None:
        try:
            runner = self._make_runner()
        except BaseException as exc:  # reported to __init__, which raises it
            ready.set_exception(exc)
            return
        ready.set_result(None)
        while (taken := self._next_batch()) is not None:
            kind, batch, expired = taken
            for job in expired:
                waited = time.monotonic() - job.enqueued
                job.future.set_exception(DeadlineExpired(
                    f"{self.name}: the deadline passed, or would before the batch ended, "
                    f"after {waited:.6f}s queued"))
            if batch:
                self._run(runner, kind, batch)

    def _next_batch(self) -> tuple[str, list[Job], list[Job]] | None:
        """Block until a batch is due: (kind, jobs to run, jobs past their deadline); None once
        closing and the queue is empty."""
        with self._lock:
            while (kind := self._oldest_unclaimed()) is None:
                if self._closing and not self._depth:
                    return None
                self._idle.wait()
            self._claimed.add(kind)
            if self._oldest_unclaimed() is not None:
                self._idle.notify()  # another kind is waiting too: hand it to an idle worker
            queue = self._queues[kind]
            flush_at = queue[0].enqueued + self._delay
            while len(queue) < self._max_batch and not self._closing:
                if not self._wait_when_idle and self._in_flight == self._depth:
                    break  # no batch is running anywhere: waiting would only idle the CPU
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._gathering.wait(remaining)
            batch, expired = self._pop(kind)
            self._claimed.discard(kind)
            if self._closing:
                self._idle.notify_all()  # idle workers re-check whether the queue is empty
            elif self._oldest_unclaimed() is not None:
                self._idle.notify()
            return kind, batch, expired

    def _oldest_unclaimed(self) -> str | None:
        best, oldest = None, 0.0
        for kind, queue in self._queues.items():
            if kind not in self._claimed and (best is None or queue[0].enqueued < oldest):
                best, oldest = kind, queue[0].enqueued
        return best

    def _pop(self, kind: str) -> tuple[list[Job], list[Job]]:
        """Up to max_batch_size live jobs of ``kind``, skipping cancelled and expired ones, so a
        cancellation does not shrink the batch. Called with the lock held."""
        queue = self._queues.get(kind, ())
        batch, expired = [], []
        ends = time.monotonic() + self.batch_seconds.get(kind, 0.0)  # when this batch would end
        while queue and len(batch) < self._max_batch:
            job = queue.popleft()
            self._depth -= 1
            if not job.future.set_running_or_notify_cancel():
                self._in_flight -= 1
            elif job.deadline is not None and job.deadline <= ends:
                self._in_flight -= 1
                expired.append(job)
            else:
                batch.append(job)
        if not queue:
            self._queues.pop(kind, None)
        return batch, expired

    def _take_all(self) -> list[Job]:
        jobs = [job for queue in self._queues.values() for job in queue]
        self._queues.clear()
        self._depth = 0
        self._in_flight -= len(jobs)
        return jobs

    def _run(self, runner: Runner, kind: str, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.started = started
        if self.on_batch is not None:
            try:
                self.on_batch(kind, len(batch))
            except Exception:  # a broken metrics hook must not fail the requests
                logger.exception("%s: on_batch hook failed", self.name)
        error: Exception | None = None
        try:
            results = runner(kind, batch)
            if len(results) != len(batch):
                raise ValueError(f"{self.name}: runner returned {len(results)} results for "
                                 f"{len(batch)} {kind!r} jobs")
        except Exception as exc:
            error = exc
        ended = time.monotonic()
        seconds, average = ended - started, self.batch_seconds.get(kind)
        self.batch_seconds[kind] = seconds if average is None else average + 0.1 * (seconds
                                                                                  - average)
        late = sum(1 for job in batch if job.deadline is not None and job.deadline < ended)
        if late and self.on_late is not None:
            try:
                self.on_late(kind, late)
            except Exception:  # a broken metrics hook must not fail the requests
                logger.exception("%s: on_late hook failed", self.name)
        with self._lock:  # before resolving, so a caller that got its result sees the count drop
            self._in_flight -= len(batch)
            self._gathering.notify_all()  # a gathering worker may now be the only one busy
        if error is not None:
            for job in batch:
                job.future.set_exception(error)
        else:
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
