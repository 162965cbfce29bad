"""Shadow traffic: the candidate answers a copy of each request, and only the baseline's answer
goes back to the client.

``Shadow.offer(route, pixels, result)`` is called by the data plane after the baseline has
answered. It never blocks and never fails the request: the copy goes into a bounded queue
(``shadow.queue_size`` of the experiment), and when that is full the copy is dropped and
counted. One daemon thread runs the copies, one at a time, on interpreters of its own (one per
variant it mirrors), at a lower CPU priority (nice 10 on Linux), and only while the baseline has
no request in its batcher: a copy waits a moment for an idle baseline, and one that finds none
is dropped. So the shadow takes spare capacity only, no serving thread ever runs a copy, and a
busy server mirrors less rather than answering slower. For each copy it records,
through the router:
- top-1 agreement, the confidence difference, and the candidate's latency;
- for a sampled share (``shadow.explain_sample``), both variants' Grad-CAM maps, their Pearson
  correlation, and the overlap of their top 20% regions. A candidate that gets the label right
  while looking at the background shows up here.
A failure of the candidate is counted as its error and logged; the client never sees it.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from serving.batching.batcher import BatcherClosed, DeadlineExpired, Job, QueueFull
from serving.cam.faithfulness import map_correlation, top_region_overlap
from serving.inference.runner import BatchRunner
from serving.inference.types import BatchOutput, Result
from serving.repository.manager import ModelManager
from serving.routing.assignment import Variant
from serving.routing.router import Route, Router

__all__ = ["Shadow"]

log = logging.getLogger("sightline.shadow")
WAIT_SECONDS = 10.0  # the most a copy waits for the candidate's batcher
IDLE_WAIT_SECONDS = 0.05  # how long a copy waits for the baseline to be idle before dropping
IDLE_POLL_SECONDS = 0.001
SHADOW_NICENESS = 10  # the shadow thread's, which runs every copy on its own interpreters
# What stops a copy without saying anything about the candidate: not served, unloading, busy.
NOT_RUN = (LookupError, QueueFull, DeadlineExpired, BatcherClosed, FutureTimeout,
           CancelledError)


@dataclass
class _Copy:
    route: Route
    pixels: np.ndarray
    baseline_probabilities: np.ndarray
    explain: bool  # both variants' maps, for the sampled share


class Shadow:
    def __init__(self, manager: ModelManager, router: Router, *, seed: int | None = None):
        self.manager = manager
        self.router = router
        self._queues: dict[str, queue.Queue] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._random = random.Random(seed)
        self._runners: dict[int, BatchRunner] = {}  # servable id -> this thread's interpreter
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
        self._thread.start()

    def offer(self, route: Route, pixels: np.ndarray, result: Result) -> None:
        """Queue a copy for the candidate; drop it (counted) when the queue is full."""
        experiment = route.experiment
        waiting = self._queues.get(experiment.name)
        if waiting is None or waiting.maxsize != experiment.shadow_queue_size:
            waiting = self._queues[experiment.name] = queue.Queue(experiment.shadow_queue_size)
        explain = self._random.random() < experiment.explain_sample
        try:
            waiting.put_nowait(_Copy(route, pixels, result.probabilities, explain))
        except queue.Full:
            self.router.shadow_dropped(experiment.name)
            return
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:  # Linux: this thread yields a core to the serving threads when both want one
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICENESS)
        except (AttributeError, OSError):
            log.debug("shadow thread runs at normal priority")
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            for waiting in list(self._queues.values()):
                while not self._stop.is_set():
                    try:
                        copy = waiting.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        self._mirror(copy)
                    except Exception:  # the shadow must never take the server down
                        log.exception("shadow copy for %s failed", copy.route.experiment.name)

    def _mirror(self, copy: _Copy) -> None:
        experiment = copy.route.experiment
        if not self._baseline_idle(copy.route):
            self.router.shadow_dropped(experiment.name)
            return
        candidate = Route(experiment, Variant.CANDIDATE)
        started = time.perf_counter()
        try:
            output = self._run_on(candidate, copy.pixels, copy.explain)
        except NOT_RUN as exc:  # not loaded, closing, its queue full: no verdict on the model
            log.debug("shadow copy for %s not run: %r", experiment.name, exc)
            self.router.shadow_dropped(experiment.name)
            return
        except Exception:
            self.router.finished(candidate, False, time.perf_counter() - started, None)
            raise
        seconds = time.perf_counter() - started
        baseline_top = int(copy.baseline_probabilities.argmax())
        top = int(output.probabilities.argmax())
        correlation = overlap = None
        if copy.explain:
            try:
                baseline_map = self._run_on(Route(experiment, Variant.BASELINE), copy.pixels,
                                            True).cam
            except NOT_RUN:
                baseline_map = None
            if baseline_map is not None and output.cam is not None and (
                    baseline_map.shape == output.cam.shape):
                correlation = float(map_correlation(baseline_map[None], output.cam[None])[0])
                overlap = float(top_region_overlap(baseline_map[None], output.cam[None])[0])
        self.router.finished(candidate, True, seconds, None)
        self.router.shadowed(experiment.name, agreed=top == baseline_top,
                             confidence_difference=float(output.probabilities[top]
                                                         - copy.baseline_probabilities[
                                                             baseline_top]),
                             map_correlation=correlation, top_region_overlap=overlap)

    def _baseline_idle(self, route: Route) -> bool:
        """Whether the baseline's batcher is empty now, or becomes so within IDLE_WAIT."""
        spec = route.experiment.baseline
        try:
            batcher = self.manager.get(route.experiment.model, spec.version, spec.label).batcher
        except LookupError:
            return True
        end = time.monotonic() + IDLE_WAIT_SECONDS
        while batcher is not None and batcher.in_flight:
            if time.monotonic() >= end:
                return False
            time.sleep(IDLE_POLL_SECONDS)
        return True

    def _run_on(self, route: Route, pixels: np.ndarray, explain: bool) -> BatchOutput:
        """One image on the variant, on this thread's own interpreter for it, held like any
        request: no batcher of the variant's is used, so no serving thread runs a copy."""
        spec = route.spec
        servable = self.manager.acquire(route.experiment.model, spec.version, spec.label)
        try:
            key = id(servable)
            runner = self._runners.get(key)
            if runner is None:
                runner = self._runners[key] = BatchRunner(servable, (1,))
                servable.on_unload.append(lambda: self._runners.pop(key, None))
            now = time.monotonic()
            kind = "explain" if explain else "classify"
            job = Job(kind, pixels, (None, "gradcam") if explain else None, None, Future(), now,
                      started=now)
            return runner(kind, [job])[0]
        finally:
            servable.release()
