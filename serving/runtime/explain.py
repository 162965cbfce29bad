"""Activations and gradients for Grad-CAM from one TFLite model call.

Two kinds of model, told apart by the card's ``model.cam.head`` (``serving.card.HEADS``):
- ``gap``: the features reach the logits through a global average pool and affine layers, so
  d logit_c / dA[i, j, k] = W_eff[k, c] / (h * w) at every position. One call of
  ``cam_inputs(image)`` gives the activations; the gradient comes from ``cam_head.npy``.
- ``gradient``: the model computes the gradient in-graph, for a one-hot target given as input.
  Top-1 targets then need the prediction first: a ``classify`` call, then ``cam_inputs``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.runtime.interpreter import TFLiteModel

__all__ = ["activations_and_gradients", "load_head_weights"]


def load_head_weights(model_dir: str | Path, card) -> np.ndarray | None:
    """The (C, K) GAP-head weights a model card names (``model.cam.head_weights``), or None
    for a head whose gradient is computed in-graph. ValueError names a bad file."""
    file = card.cam.head_weights if card.cam is not None else None
    if not file:
        return None
    path = Path(model_dir) / file
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path.name}: {exc}") from None
    if weights.ndim != 2 or weights.shape[1] != card.num_classes:
        raise ValueError(f"{path.name} has shape {weights.shape}; expected (channels, "
                         f"{card.num_classes})")
    return weights


def activations_and_gradients(model: TFLiteModel, images: np.ndarray,
                              targets: np.ndarray | None = None,
                              head_weights: np.ndarray | None = None):
    """(N, H, W, 3) pixels, (N,) target classes (-1: that image's top-1) or None (all top-1) ->
    (probabilities (N, K), activations (N, h, w, C), gradients, targets (N,)).

    Gradients are (N, h, w, C), or (N, 1, 1, C) for a GAP head, where they are the same at every
    position; the CAM methods take either."""
    if targets is not None:
        targets = np.asarray(targets)
        if (targets < 0).all():
            targets = None
    if model.cam_needs_target:
        probabilities = None
        if targets is None or (targets < 0).any():
            probabilities = model.classify(images)
            top1 = probabilities.argmax(axis=1)
            targets = top1 if targets is None else np.where(targets < 0, top1, targets)
        classes = model.num_classes
        onehot = np.eye(classes, dtype=np.float32)[targets]
        cam_probabilities, activations, gradients = model.cam_inputs(images, onehot)
        return (cam_probabilities if probabilities is None else probabilities,
                activations, gradients, np.asarray(targets))
    if head_weights is None:
        raise ValueError("a GAP-head model needs its head weights (cam_head.npy) for Grad-CAM")
    probabilities, activations, _ = model.cam_inputs(images)
    top1 = probabilities.argmax(axis=1)
    targets = top1 if targets is None else np.where(targets < 0, top1, targets)
    n, h, w, c = activations.shape
    gradients = (head_weights[:, targets].T / (h * w)).astype(np.float32).reshape(n, 1, 1, c)
    return probabilities, activations, gradients, np.asarray(targets)
