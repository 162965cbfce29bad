"""The batch worker's job: one interpreter, one batch in, one ``BatchOutput`` per request out.

Each batcher worker thread builds one ``BatchRunner`` (an interpreter is not thread-safe), warms
its interpreter at the policy's batch sizes in both signatures, then runs batches of one kind:
``classify`` (probabilities only) or ``explain`` (probabilities plus a CAM map per request, each
request with its own target class and method, at the feature map's size). The version's drift
monitor sees every batch here, so drift is measured whether or not metrics are exported.
"""

from __future__ import annotations

import time

import numpy as np

from serving.batching.batcher import Job
from serving.cam import get_method
from serving.inference.types import BatchOutput
from serving.reference_stats import brightness
from serving.repository.loader import warm_up
from serving.repository.servable import Servable
from serving.runtime.explain import activations_and_gradients

__all__ = ["BatchRunner"]


class BatchRunner:
    def __init__(self, servable: Servable, warmup_batch_sizes: tuple[int, ...]):
        self.model = servable.take_interpreter()
        self.servable = servable
        self.warmup_seconds = warm_up(self.model, servable.card, warmup_batch_sizes)

    def __call__(self, kind: str, jobs: list[Job]) -> list[BatchOutput]:
        images = np.stack([job.inputs for job in jobs])  # (N, H, W, 3)
        started = time.perf_counter()
        if kind == "classify":
            probabilities = self.model.classify(images)
            maps, targets = [None] * len(jobs), probabilities.argmax(axis=1)
        else:
            probabilities, maps, targets = self._explain(images, jobs)
        seconds = time.perf_counter() - started
        self._observe_drift(images, probabilities)
        return [BatchOutput(p, m, int(t), seconds, job.started - job.enqueued)
                for p, m, t, job in zip(probabilities, maps, targets, jobs, strict=True)]

    def _explain(self, images: np.ndarray, jobs: list[Job]):
        wanted = np.array([-1 if job.target[0] is None else job.target[0] for job in jobs])
        probabilities, activations, gradients, targets = activations_and_gradients(
            self.model, images, wanted, self.servable.head_weights)
        maps = np.empty(activations.shape[:3], dtype=np.float32)  # (N, h, w)
        methods = np.array([job.target[1] for job in jobs])
        for method in set(methods.tolist()):
            rows = np.flatnonzero(methods == method)
            every = len(rows) == len(jobs)
            grads = gradients if gradients is None or every else gradients[rows]
            maps[rows] = get_method(method)(activations if every else activations[rows], grads)
        return probabilities, maps, targets

    def _observe_drift(self, images: np.ndarray, probabilities: np.ndarray) -> None:
        """One numpy pass per batch: top class, its probability and the input's mean luma."""
        monitor = self.servable.drift
        if monitor is not None:
            top = probabilities.argmax(axis=1)
            monitor.observe_batch(top, probabilities[np.arange(len(top)), top],
                                  brightness(images))
