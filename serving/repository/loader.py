"""The loader: turns one version directory into a checked, warmed-up ``Servable``.

``models/<name>/<version>/`` holds ``model.tflite``, ``card.json`` and, for a global-average-pool
head, the head weights the card names (``cam_head.npy``). Every way the directory can disagree
with its card fails here, as a ``LoadError`` whose message is the reason, so that a broken version
is refused before it serves and never fails mid-request:

- the card is unreadable or breaks the schema, says ``deployable: false`` (quantization failed
  its accuracy gate), or carries another version number than its directory;
- a file's sha256 differs from the card's ``files`` entry (a partial copy, a tampered file);
- the model's class count or input size differs from the card's labels and input;
- the model cannot be opened, or fails a warm-up run.

Loading runs ``warm_up`` once: ``classify``, and ``cam_inputs`` when the card describes a CAM
signature, on zero images. That is the proof that both signatures run. The interpreter it ran
is the servable's first serving interpreter (``Servable.take_interpreter``); each batch worker
warms its own with ``warm_up`` at its batch sizes, so no first request pays for allocation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.card import MODEL_FILE, CardError, ModelCard, file_sha256, load_card
from serving.repository.servable import Servable
from serving.runtime.explain import load_head_weights
from serving.runtime.interpreter import TFLiteModel

__all__ = ["LoadError", "load_servable", "warm_up"]


class LoadError(Exception):
    """A version directory cannot be served; the message says why."""


def load_servable(name: str, version: int, path: str | Path, *,
                  open_model: Callable[[Path], Any] = TFLiteModel,
                  warmup_batch_sizes: Sequence[int] = (1,)) -> Servable:
    """Check and open ``path`` as version ``version`` of model ``name``; raise ``LoadError``.

    ``open_model(path_to_tflite)`` returns an object with ``classify``, ``cam_inputs``,
    ``num_classes`` and ``input_shape`` (``TFLiteModel``; tests pass a fake). It is also the
    servable's factory for the interpreters of its worker threads after the first.
    """
    path = Path(path)
    try:
        card = load_card(path)
    except CardError as exc:
        raise LoadError(str(exc)) from None
    if not card.deployable:
        raise LoadError("card says deployable: false (quantization did not pass its accuracy gate)")
    if card.version is not None and card.version != version:
        raise LoadError(f"card says version {card.version} but the directory is version {version}")
    for file in card.served_files:
        _verify(path, file, card)

    model_path = path / MODEL_FILE
    try:
        model = open_model(model_path)
    except Exception as exc:  # LiteRT raises ValueError or RuntimeError for a bad file
        raise LoadError(f"cannot open {MODEL_FILE}: {exc}") from exc
    _check_model(model, card)
    try:
        head_weights = load_head_weights(path, card)
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    try:
        warm_up(model, card, warmup_batch_sizes)
    except ValueError as exc:
        raise LoadError(str(exc)) from exc
    return Servable(name, version, card, path, model=model,
                    model_factory=lambda: open_model(model_path), head_weights=head_weights)


def _verify(path: Path, file: str, card: ModelCard) -> None:
    entry = card.files.get(file)
    if entry is None:
        raise LoadError(f"card has no sha256 for {file} in its files")
    expected = entry.sha256
    try:
        actual = file_sha256(path / file)
    except OSError as exc:
        raise LoadError(f"cannot read {file}: {exc}") from None
    if actual != expected:
        raise LoadError(f"sha256 mismatch: {file} is {actual}, card says {expected}")


def _check_model(model: Any, card: ModelCard) -> None:
    if model.num_classes != card.num_classes:
        raise LoadError(f"model has {model.num_classes} classes but the card lists "
                        f"{card.num_classes} labels")
    # Fully convolutional models accept any size, so a mismatch would not fail at warm-up.
    expected = (card.input.height, card.input.width, card.input.channels)
    if tuple(model.input_shape) != expected:
        raise LoadError(f"model takes {tuple(model.input_shape)} (height, width, channels) "
                        f"images but the card says {expected}")


def warm_up(model: Any, card: ModelCard, batch_sizes: Sequence[int]) -> float:
    """Run every signature the card serves at each batch size, so that tensors are allocated
    before a request comes; -> seconds taken. Raises ValueError naming the step that failed."""
    started = time.perf_counter()
    shape = (card.input.height, card.input.width, card.input.channels)
    step = "classify"
    try:
        for batch in batch_sizes:
            step = f"classify at batch size {batch}"
            probabilities = model.classify(np.zeros((batch, *shape), np.uint8))
            if probabilities.shape != (batch, card.num_classes):
                raise ValueError(f"it returned shape {probabilities.shape}")
            if card.cam is not None:
                step = f"cam_inputs at batch size {batch}"
                # The one-hot target is ignored by heads that do not need it (GAP).
                model.cam_inputs(np.zeros((batch, *shape), np.uint8),
                                 np.eye(card.num_classes, dtype=np.float32)[[0] * batch])
    except Exception as exc:
        raise ValueError(f"warm-up {step} failed: {exc}") from exc
    return time.perf_counter() - started
