"""A servable: one loaded version of one model, and the count of requests holding it.

The loader builds it (``serving.repository.loader``); the manager publishes it, hands it to
requests through ``ModelManager.handle`` and, once no version policy or label wants it, drains and
unloads it. ``acquire`` fails once draining has begun, so a request either holds a servable that
stays loaded until it lets go, or is sent back to the manager for the version now served.

Whatever the server attaches per version (a batcher, worker interpreters) goes in ``resources``;
its clean-up goes in ``on_unload``, which runs after the last holder has let go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.card import ModelCard

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
        self.model = model  # the warmed-up model the loader checked; one thread at a time
        self.model_factory = model_factory  # a fresh interpreter, e.g. one per worker thread
        self.head_weights = head_weights  # (C, K) GAP head weights for Grad-CAM, or None
        self.warmup_seconds = warmup_seconds
        self.loaded_at = time.time()
        self.resources: dict[str, Any] = {}
        self.on_unload: list[Callable[[], None]] = []
        self._idle = threading.Condition()
        self._holders = 0
        self._draining = False
        self._unloaded = False

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, version={self.version}, holders={self._holders})"

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
        self.model = None
        self.resources.clear()
