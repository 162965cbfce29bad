"""The source: finds the versions on disk and tells the manager which ones to serve.

The repository is ``<base>/<name>/<version>/`` (a positive integer without leading zeros), plus
an optional ``<base>/<name>/labels.json`` such as ``{"stable": 3, "canary": 4}``. Names starting
with "." or "_" are skipped: ``repository.publish`` stages a version as ``.tmp-...`` and renames it,
so a version directory appears whole or not at all.

Per model, the aspired versions are what the version policy selects plus every labelled version;
the other versions on disk, newest first, are its fallbacks: the manager loads the newest of them
that works when no aspired version loads and none is served (a restart with a broken newest
version serves the previous one). ``poll`` sends the manager the full aspired set of each model
whose set changed (a model whose directory vanished gets an empty set, which unloads it); the
server calls it every ``interval_seconds``, on its own polling thread.
A version that failed to load is retried only when the aspired set changes: versions are
immutable, so the fix is to deploy a new one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from serving.repository.policy import Latest, VersionPolicy

__all__ = ["LABELS_FILE", "Aspired", "DirectorySource", "read_labels", "version_dirs"]

LABELS_FILE = "labels.json"

logger = logging.getLogger("sightline.repository")


class _Target(Protocol):  # ModelManager, or a fake in tests
    def set_aspired(self, name: str, versions: dict[int, Path], labels: dict[str, int],
                    fallbacks: dict[int, Path]) -> None: ...


@dataclass(frozen=True)
class Aspired:
    versions: dict[int, Path]  # version -> directory
    labels: dict[str, int]
    fallbacks: dict[int, Path] = field(default_factory=dict)  # newest first


_NOTHING = Aspired({}, {})


def version_dirs(model_dir: Path) -> dict[int, Path]:
    """The published versions of one model: integer-named directories."""
    return {int(d.name): d for d in model_dir.iterdir()
            if d.is_dir() and d.name.isdigit() and d.name == str(int(d.name)) and int(d.name)}


def read_labels(model_dir: Path) -> dict[str, int]:
    """``labels.json`` as {label: version}; {} when absent; ValueError naming a bad entry."""
    path = model_dir / LABELS_FILE
    if not path.exists():
        return {}
    labels = json.loads(path.read_text())
    if not isinstance(labels, dict):
        raise ValueError(f"{path} must hold a JSON object; got {type(labels).__name__}")
    for label, version in labels.items():
        if type(version) is not int or version < 1:
            raise ValueError(f"{path}: label {label!r} needs a positive version; got {version!r}")
    return labels


class DirectorySource:
    def __init__(self, base_dir: str | Path, policy: VersionPolicy | None = None,
                 interval_seconds: float = 30.0):
        self.base_dir = Path(base_dir)
        self.policy = policy or Latest()
        self.interval_seconds = interval_seconds
        self._sent: dict[str, Aspired] = {}

    def scan(self) -> dict[str, Aspired]:
        """What should be served now, per model; raises OSError if the base dir is unreadable."""
        models = {}
        for model_dir in sorted(self.base_dir.iterdir()):
            if model_dir.name.startswith((".", "_")) or not model_dir.is_dir():
                continue
            on_disk = version_dirs(model_dir)
            try:
                labels = read_labels(model_dir)
            except ValueError as exc:  # includes JSONDecodeError; keep the labels last sent
                labels = self._sent.get(model_dir.name, _NOTHING).labels
                logger.warning("ignoring %s (keeping %s): %s", LABELS_FILE, labels, exc)
            chosen = self.policy.select(on_disk) | (set(labels.values()) & on_disk.keys())
            fallbacks = {v: on_disk[v] for v in sorted(on_disk.keys() - chosen, reverse=True)}
            models[model_dir.name] = Aspired({v: on_disk[v] for v in sorted(chosen)}, labels,
                                             fallbacks)
        return models

    def poll(self, manager: _Target) -> list[str]:
        """Scan once and send every model whose aspired set changed; returns their names."""
        found = self.scan()
        for name in self._sent.keys() - found.keys():
            found[name] = _NOTHING
        changed = [name for name, aspired in found.items()
                   if self._sent.get(name, _NOTHING) != aspired]
        for name in changed:
            aspired = found[name]
            manager.set_aspired(name, aspired.versions, aspired.labels, aspired.fallbacks)
            self._sent[name] = found[name]
        self._sent = {name: aspired for name, aspired in self._sent.items()
                      if aspired != _NOTHING}
        return changed
