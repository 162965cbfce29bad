"""The manager: which servables are live, and the one place that swaps them.

gRPC handler threads call ``get`` or ``acquire`` on every request; a source (or the server, for a
single model directory) calls ``set_aspired`` with the whole list of versions it wants for a
model. Omitting a version means "unload it"; an empty list unloads the model.

Guarantees:
- Readers never lock: the live servables are an immutable snapshot that ``set_aspired`` replaces
  with one attribute assignment, so a request sees either the old or the new set, never a mix.
- Availability is preserved: new versions load (and warm up) before the snapshot swaps, and old
  ones are unloaded only after it. A version that fails to load is logged, counted and reported
  as ``load_failed``; a label aimed at it stays on its previous version; if no aspired version
  of a model loads, the versions already served stay served; and if none is served either (a
  cold start), the newest fallback version that loads is served instead.
- A servable held through ``acquire`` is not unloaded until released: retired servables are
  drained (up to ``drain_timeout`` seconds) and unloaded in a background thread, so
  ``set_aspired`` waits for loads but never for slow requests. ``wait_for_unloads`` joins them.

``on_event(event, name, version, details)`` reports "loaded" (seconds, warmup_seconds),
"load_failed" (seconds, reason) and "unloaded" (seconds, drained) to whoever keeps metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.card import CardError, load_card
from serving.repository.loader import LoadError, load_servable
from serving.repository.servable import Servable

__all__ = ["EventHook", "ModelManager", "ModelNotFound"]

logger = logging.getLogger("sightline.repository")

EventHook = Callable[[str, str, int, dict[str, Any]], None]

# Each failed acquire means a newer snapshot is already published, so retries are rare and short.
_ACQUIRE_ATTEMPTS = 10


class ModelNotFound(LookupError):
    """No such model, version or label; the message names what is being served instead."""


@dataclass(frozen=True)
class _Snapshot:
    # Never mutated once published: writers build a new one.
    models: dict[str, dict[int, Servable]] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # every label is in models


class ModelManager:
    def __init__(self, *, loader: Callable[[str, int, Path], Servable] = load_servable,
                 on_event: EventHook | None = None, drain_timeout: float = 30.0):
        self.on_event = on_event
        self.drain_timeout = drain_timeout
        self.load_failures: Counter[str] = Counter()  # per model name
        self._loader = loader
        self._snapshot = _Snapshot()
        self._write_lock = threading.Lock()  # one writer at a time; readers never take it
        self._unloaders: list[threading.Thread] = []
        self._unloaders_lock = threading.Lock()

    @classmethod
    def from_directory(cls, path: str | Path, **kwargs: Any) -> ModelManager:
        """Serve one model directory (a training artifact) as version ``card.version`` or 1.

        Unlike ``set_aspired``, a failure raises ``LoadError``: with no repository there is
        nothing else to serve, so the server should not start.
        """
        path = Path(path)
        try:
            card = load_card(path)
        except CardError as exc:
            raise LoadError(str(exc)) from None
        manager = cls(**kwargs)
        manager.add(manager._load(card.name, card.version or 1, path))
        return manager

    # -- readers: called by every request ---------------------------------------------------

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a version, a label, or (neither given) the latest version."""
        snapshot = self._snapshot
        versions = snapshot.models.get(name)
        if versions is None:
            served = ", ".join(sorted(snapshot.models)) or "none"
            raise ModelNotFound(f"no model {name!r}; models served: {served}")
        if label is not None:
            if version is not None:
                raise ValueError(f"ask for a version or a label, not both ({version}, {label!r})")
            labels = snapshot.labels.get(name, {})
            if label not in labels:
                served = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
                raise ModelNotFound(f"model {name!r} has no label {label!r}; labels: {served}")
            version = labels[label]
        if version is None:
            return versions[max(versions)]
        if version not in versions:
            served = ", ".join(map(str, sorted(versions)))
            raise ModelNotFound(f"model {name!r} has no version {version}; versions: {served}")
        return versions[version]

    def acquire(self, name: str, version: int | None = None,
                label: str | None = None) -> Servable:
        """Hold a servable for one request, held across calls (the server's submit, then
        finish): it is not unloaded until the caller ``release()``s it, exactly once."""
        for _ in range(_ACQUIRE_ATTEMPTS):
            servable = self.get(name, version, label)
            if servable.acquire():
                return servable
        raise ModelNotFound(f"model {name!r} was swapped out {_ACQUIRE_ATTEMPTS} times in a "
                            "row while being acquired")

    def ready(self, name: str | None = None) -> bool:
        """Whether ``name`` (or, with no name, any model) has a version being served."""
        models = self._snapshot.models
        return name in models if name is not None else bool(models)

    def models(self) -> dict[str, list[int]]:
        return {name: sorted(versions) for name, versions in self._snapshot.models.items()}

    def labels(self) -> dict[str, dict[str, int]]:
        return {name: dict(labels) for name, labels in self._snapshot.labels.items()}

    # -- writers: the source, the server at start and stop -----------------------------------

    def set_aspired(self, name: str, versions: Mapping[int, str | Path],
                    labels: Mapping[str, int] | None = None,
                    fallbacks: Mapping[int, str | Path] | None = None) -> None:
        """Serve exactly ``versions`` ({version: directory}) of ``name``, with ``labels``; when
        none of them loads and nothing of ``name`` is served, the first of ``fallbacks`` (newest
        first) that loads.

        Blocks while new versions load; returns once the new snapshot is live.
        """
        versions = {int(v): Path(p) for v, p in versions.items()}
        with self._write_lock:
            old = self._snapshot.models.get(name, {})
            old_labels = self._snapshot.labels.get(name, {})
            ready = {v: s for v, s in old.items() if v in versions}
            for version in sorted(versions.keys() - old.keys()):
                with contextlib.suppress(LoadError):  # _load logged, counted and reported it
                    ready[version] = self._load(name, version, versions[version])
            if versions and old and not ready:
                logger.warning("no aspired version of %s loaded; still serving versions %s",
                               name, sorted(old))
                ready = dict(old)
            if versions and not ready:
                ready = self._load_fallback(name, sorted(versions), fallbacks or {})
            new_labels = {}
            for label, version in (labels or {}).items():
                previous = old_labels.get(label)
                if version in ready:
                    new_labels[label] = version
                elif previous in old:
                    logger.warning("label %s of %s stays on version %d: version %d is not loaded",
                                   label, name, previous, version)
                    new_labels[label] = previous
                    ready[previous] = old[previous]
                else:
                    logger.warning("label %s of %s points at version %d, which is not loaded",
                                   label, name, version)
            self._publish(name, ready, new_labels)
            self._retire([s for v, s in old.items() if v not in ready])

    def add(self, servable: Servable) -> None:
        """Publish an already loaded servable next to what is served (start-up, tests)."""
        with self._write_lock:
            versions = self._snapshot.models.get(servable.name, {})
            if servable.version in versions:
                raise ValueError(f"{servable.name} version {servable.version} is already served")
            labels = self._snapshot.labels.get(servable.name, {})
            self._publish(servable.name, {**versions, servable.version: servable}, labels)

    def close(self, timeout: float | None = None) -> bool:
        """Stop serving everything, drain and unload; False if unloads outlast ``timeout``."""
        with self._write_lock:
            retired = [s for versions in self._snapshot.models.values() for s in versions.values()]
            self._snapshot = _Snapshot()
            self._retire(retired)
        return self.wait_for_unloads(timeout)

    def wait_for_unloads(self, timeout: float | None = None) -> bool:
        """Join the background unloads started so far; False if some outlast ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._unloaders_lock:
            threads = list(self._unloaders)
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        with self._unloaders_lock:
            self._unloaders = [t for t in self._unloaders if t.is_alive()]
        return not any(t.is_alive() for t in threads)

    # -- internals ---------------------------------------------------------------------------

    def _load(self, name: str, version: int, path: Path) -> Servable:
        started = time.perf_counter()
        try:
            servable = self._loader(name, version, path)
        except LoadError as exc:
            self.load_failures[name] += 1
            logger.warning("%s version %d failed to load from %s: %s", name, version, path, exc)
            self._emit("load_failed", name, version,
                       {"seconds": time.perf_counter() - started, "reason": str(exc)})
            raise
        seconds = time.perf_counter() - started
        logger.info("loaded %s version %d from %s in %.2fs (warm-up %.3fs)",
                    name, version, path, seconds, servable.warmup_seconds)
        self._emit("loaded", name, version,
                   {"seconds": seconds, "warmup_seconds": servable.warmup_seconds})
        return servable

    def _load_fallback(self, name: str, failed: list[int],
                       fallbacks: Mapping[int, str | Path]) -> dict[int, Servable]:
        """The newest fallback version that loads, as {version: servable}; {} if none does."""
        for version, path in fallbacks.items():
            with contextlib.suppress(LoadError):
                servable = self._load(name, int(version), Path(path))
                logger.warning("no aspired version of %s loaded (%s); serving version %d, the "
                               "newest that does", name, failed, servable.version)
                return {servable.version: servable}
        logger.error("no version of %s loads; it is not served", name)
        return {}

    def _publish(self, name: str, versions: dict[int, Servable], labels: dict[str, int]) -> None:
        models = dict(self._snapshot.models)
        all_labels = dict(self._snapshot.labels)
        models.pop(name, None)
        all_labels.pop(name, None)
        if versions:
            models[name] = versions
            all_labels[name] = labels
        self._snapshot = _Snapshot(models, all_labels)  # the atomic swap readers see

    def _retire(self, servables: list[Servable]) -> None:
        if not servables:
            return
        thread = threading.Thread(target=self._unload, args=(servables,), daemon=True,
                                  name=f"sightline-unload-{servables[0].name}")
        with self._unloaders_lock:
            self._unloaders.append(thread)
        thread.start()

    def _unload(self, servables: list[Servable]) -> None:
        for servable in servables:
            started = time.perf_counter()
            drained = servable.drain(self.drain_timeout)
            if not drained:
                logger.warning("%s version %d still held by %d requests after %.0fs; unloading",
                               servable.name, servable.version, servable.holders,
                               self.drain_timeout)
            servable.unload()
            seconds = time.perf_counter() - started
            logger.info("unloaded %s version %d after %.2fs", servable.name, servable.version,
                        seconds)
            self._emit("unloaded", servable.name, servable.version,
                       {"seconds": seconds, "drained": drained})

    def _emit(self, event: str, name: str, version: int, details: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event, name, version, details)
        except Exception:  # a broken metrics hook must not stop a load or an unload
            logger.exception("on_event hook failed for %s %s version %d", event, name, version)
