"""The repository's loader for a serving process: load and check a version, then attach what
serves it, before the manager publishes it.

``AttachingLoader(open_model, policy, ...)`` is the ``loader`` a ``ModelManager`` calls with
(name, version, path). It runs ``repository.loader.load_servable``, then starts the version's
``DynamicBatcher``, whose workers each take an interpreter and warm it in both signatures (the
time they take is the servable's ``warmup_seconds``), and makes the version's drift monitor
when its card has reference statistics. A version that cannot start its workers is refused
like any other bad version, so it never serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.batching.batcher import DynamicBatcher
from serving.batching.policy import BatchPolicy
from serving.inference.observer import NO_OBSERVER, Observer
from serving.inference.runner import BatchRunner
from serving.observe.drift import DriftMonitor
from serving.repository.loader import LoadError, load_servable
from serving.repository.servable import Servable

__all__ = ["AttachingLoader", "DriftWindow"]

DriftWindow = tuple[int, int]  # (window, min_samples) of each version's drift monitor


class AttachingLoader:
    def __init__(self, open_model: Callable[[Path], Any], policy: BatchPolicy | None = None, *,
                 observer: Observer = NO_OBSERVER, drift: DriftWindow | None = (1000, 500)):
        self.open_model = open_model
        self.policy = policy or BatchPolicy()
        self.observer = observer
        self.drift = drift  # None: no drift monitors

    def __call__(self, name: str, version: int, path: Path) -> Servable:
        servable = load_servable(name, version, path, open_model=self.open_model)
        reference = servable.card.reference
        if reference is not None and self.drift is not None:
            window, min_samples = self.drift
            servable.drift = DriftMonitor(reference, servable.card.num_classes, window=window,
                                          min_samples=min_samples)
        started = time.perf_counter()
        try:
            batcher = servable.batcher = self._batcher(servable)
        except Exception as exc:
            servable.unload()
            raise LoadError(f"cannot start the batcher's interpreters: {exc}") from exc
        servable.warmup_seconds = time.perf_counter() - started
        servable.on_unload.append(lambda: batcher.close(drain=True))
        return servable

    def _batcher(self, servable: Servable) -> DynamicBatcher:
        sizes = self.policy.warmup_batch_sizes
        batcher = DynamicBatcher(lambda: BatchRunner(servable, sizes), self.policy,
                                 name=f"{servable.name}-v{servable.version}")
        name, version, observer = servable.name, servable.version, self.observer
        batcher.on_batch = lambda kind, size: observer.batch(name, version, size)
        batcher.on_late = lambda kind, count: observer.late_results(name, version, count)
        return batcher
