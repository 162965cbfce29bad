"""A servable: one loaded version of one model, and the count of requests holding it.

The loader builds it (``repository.loader``); the manager publishes it, lends it to requests
(``ModelManager.acquire``) and, once no version policy or label wants it, drains and unloads
it. ``acquire`` fails once draining has begun, so a request either holds a servable that stays
loaded until it lets go, or is sent back to the manager for the version now served.

The data plane attaches what it runs per version in typed fields: its ``batcher`` (whose worker
threads own the interpreters) and its ``drift`` monitor. Their clean-up goes in ``on_unload``,
which runs after the last holder has let go. The interpreter the loader checked is not kept
idle: ``take_interpreter`` hands it to the first worker, and opens fresh ones after that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.card import ModelCard

if TYPE_CHECKING:
    from serving.batching.batcher import DynamicBatcher
    from serving.observe.drift import DriftMonitor

__all__ = ["Servable"]

logger = logging.getLogger("sightline.repository")


class Servable:
    def __init__(self, name: str, version: int, card: ModelCard, path: Path, *,
                 model: Any, model_factory: Callable[[], Any],
                 head_weights: np.ndarray | None = None, warmup_seconds: float = 0.0):
        self.name = name
        self.version = version
        self.card = card
        self.path = path
        self._checked_model = model  # the interpreter the loader opened and ran
        self.model_factory = model_factory  # a fresh interpreter, one per worker thread
        self.head_weights = head_weights  # (C, K) GAP head weights for Grad-CAM, or None
        self.warmup_seconds = warmup_seconds  # the serving interpreters' warm-up, all together
        self.loaded_at = time.time()
        self.batcher: DynamicBatcher | None = None
        self.drift: DriftMonitor | None = None
        self.on_unload: list[Callable[[], None]] = []
        self._idle = threading.Condition()
        self._holders = 0
        self._draining = False
        self._unloaded = False

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version}, holders={self._holders})"

    def take_interpreter(self) -> Any:
        """An interpreter for one worker thread: the loader's checked one first, then new ones."""
        with self._idle:
            model, self._checked_model = self._checked_model, None
        return model if model is not None else self.model_factory()

    @property
    def holders(self) -> int:
        return self._holders

    @property
    def unloaded(self) -> bool:
        return self._unloaded

    def acquire(self) -> bool:
        """Count one more holder; False once draining has begun (ask the manager again)."""
        with self._idle:
            if self._draining:
                return False
            self._holders += 1
            return True

    def release(self) -> None:
        with self._idle:
            if self._holders <= 0:
                raise RuntimeError(f"{self!r} released more often than acquired")
            self._holders -= 1
            if self._holders == 0:
                self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Refuse new holders and wait until the current ones let go; False on timeout."""
        with self._idle:
            self._draining = True
            return self._idle.wait_for(lambda: self._holders == 0, timeout)

    def unload(self) -> None:
        """Run the ``on_unload`` callbacks (in order) and drop the model; call after ``drain``.

        A failing callback is logged with its traceback and the rest still run, so one broken
        attachment cannot keep the others (or the interpreter's memory) alive.
        """
        if self._unloaded:
            return
        with self._idle:
            self._draining = True
        for callback in self.on_unload:
            try:
                callback()
            except Exception:
                logger.exception("on_unload callback %r of %s v%d failed",
                                 callback, self.name, self.version)
        self._unloaded = True
        self._checked_model = self.batcher = self.drift = None
