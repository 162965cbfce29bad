"""Publish a training artifact into the model repository as its next version.

    python -m serving.repository.publish [ARTIFACT] --models models [--name NAME] [--label stable]

ARTIFACT defaults to the newest deployable artifact under ``--artifacts``: ``latest`` when its
card says ``deployable: true``, else the deployable card with the newest ``created_at``. The
primary ``model.tflite``, the CAM head weights the card names and ``card.json`` (its ``name`` and
``version`` set) are staged in ``<models>/<name>/.tmp-<version>-<random>/``, fsynced, checked
against the card's sha256s, and proven: the staged version is loaded exactly as the server loads
it, with LiteRT running both signatures once, so a version that would not load is never
published. Then it is renamed to ``<models>/<name>/<version>/``: the rename is atomic, so a
polling server never sees half a version. ``--label`` then points a label at it by
replacing ``labels.json`` atomically. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

from serving.card import CARD_FILE, CardError, ModelCard, file_sha256, load_card, save_card
from serving.repository.loader import LoadError, load_servable
from serving.repository.source import LABELS_FILE, read_labels, version_dirs
from serving.runtime.interpreter import TFLiteModel

__all__ = ["DeployError", "deploy", "main", "newest_deployable", "set_label"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # no hidden, staging or path-like names


class DeployError(Exception):
    """The artifact cannot be published; the message says why."""


def newest_deployable(artifacts: Path) -> Path:
    if not artifacts.is_dir():
        raise DeployError(f"no artifacts directory {artifacts}: name an ARTIFACT or --artifacts")
    latest = artifacts / "latest"
    if latest.is_dir() and _deployable_card(latest):
        return latest.resolve()
    cards = [(card.created_at, path) for path in sorted(artifacts.iterdir())
             if path.is_dir() and path.name != "latest" and (card := _deployable_card(path))]
    if not cards:
        raise DeployError(f"no deployable artifact under {artifacts}: no card says deployable: "
                          "true (quantize one that passes the accuracy gate, or name one)")
    return max(cards)[1]


def deploy(artifact: Path, models: Path, name: str | None = None,
           label: str | None = None) -> Path:
    """Publish ``artifact`` as the next version of ``name``; returns the version directory."""
    card = _card(artifact)
    if not card.deployable:
        raise DeployError(f"{artifact} is not deployable: its quantization did not pass the "
                          "accuracy gate (card says deployable: false)")
    name = name or card.name
    if not _NAME.fullmatch(name):
        raise DeployError(f"bad model name {name!r}: use letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    files = card.served_files
    model_dir = models / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = max(version_dirs(model_dir), default=0) + 1
    staging = model_dir / f".tmp-{version}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        for file in files:
            shutil.copyfile(artifact / file, staging / file)
            entry = card.files.get(file)
            expected = entry.sha256 if entry is not None else None
            actual = file_sha256(staging / file)
            if actual != expected:
                raise DeployError(f"sha256 mismatch: {file} is {actual}, card says {expected} "
                                  f"(the artifact is damaged or was changed)")
        save_card(dataclasses.replace(card, name=name, version=version), staging)
        for file in [*files, CARD_FILE, "."]:
            _fsync(staging / file)
        _prove(name, version, staging, artifact)
        target = model_dir / str(version)
        try:
            os.rename(staging, target)  # fails if another deploy published this version first
        except OSError as exc:
            raise DeployError(f"cannot publish {target}: {exc.strerror}; deploy again") from None
        _fsync(model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if label:
        set_label(model_dir, label, version)
    return target


def _prove(name: str, version: int, staging: Path, artifact: Path) -> None:
    """Load the staged version as the server would (checks, LiteRT open, both signatures run
    once); a card's sha256s can match a model that does not load."""
    try:
        load_servable(name, version, staging, open_model=TFLiteModel).unload()
    except LoadError as exc:
        raise DeployError(f"{artifact} would not load, so nothing was published: {exc}") from None


def set_label(model_dir: Path, label: str, version: int) -> None:
    """Point ``label`` at ``version`` in ``labels.json``, replaced atomically."""
    try:
        labels = read_labels(model_dir)
    except ValueError as exc:
        raise DeployError(f"cannot update labels: {exc}") from None
    staging = model_dir / f".labels-{secrets.token_hex(4)}.json"
    staging.write_text(json.dumps({**labels, label: version}, indent=2) + "\n")
    _fsync(staging)
    os.replace(staging, model_dir / LABELS_FILE)
    _fsync(model_dir)


def _card(path: Path) -> ModelCard:
    try:
        return load_card(path)
    except CardError as exc:
        raise DeployError(str(exc)) from None


def _deployable_card(path: Path) -> ModelCard | None:
    try:
        card = load_card(path)
    except CardError:  # not an artifact, or a broken one: not a candidate
        return None
    return card if card.deployable else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.repository.publish",
                                     description="Publish an artifact as the next model version.")
    parser.add_argument("artifact", nargs="?", type=Path,
                        help="artifact directory (default: newest deployable under --artifacts)")
    parser.add_argument("--models", type=Path, required=True, help="model repository root")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--name", help="model name (default: the card's name)")
    parser.add_argument("--label", help="point this label (e.g. stable) at the new version")
    args = parser.parse_args(argv)
    try:
        artifact = args.artifact or newest_deployable(args.artifacts)
        print(deploy(artifact, args.models, args.name, args.label))
    except (DeployError, OSError) as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
