"""The report's figures: each function draws one matplotlib figure and returns it as PNG bytes.

Inputs are plain numpy arrays, lists and dicts (no Keras), so every figure can be drawn from
numbers alone. The Agg backend is selected on import: the report is written on headless machines.
Small images are drawn with nearest-neighbour scaling, so a 32 px pixel stays a sharp square.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from serving.cam import render  # noqa: E402

__all__ = ["cam_gallery", "confusion_matrices", "feature_maps", "first_layer_filters",
           "image_grid", "per_class_bars", "training_curves"]

DPI = 100
CAM_SIZE = 128  # gallery tiles are drawn at about this many pixels a side


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def _off(axes) -> None:
    for ax in np.ravel(axes):
        ax.axis("off")


def _show(ax, image: np.ndarray) -> None:
    """Nearest-neighbour for small images (sharp pixels); smoothed when shrinking large ones."""
    ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) <= 64 else "antialiased")


def training_curves(history: dict[str, list[float]]) -> bytes:
    """Loss, accuracy (train and validation) and learning rate against the epoch."""
    panels = [("Loss", ["loss", "val_loss"]), ("Accuracy", ["accuracy", "val_accuracy"]),
              ("Learning rate", ["learning_rate"])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = history.get(key)
            if values:
                label = "validation" if key.startswith("val_") else "train"
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3,
                        label=label if title != "Learning rate" else "learning rate")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    return _png(fig)


def confusion_matrices(matrix: np.ndarray, labels: list[str]) -> bytes:
    """Counts and row-normalised shares side by side; rows are true classes."""
    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    side = max(4.5, 0.55 * len(labels) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    annotate = len(labels) <= 20  # beyond that the numbers are too small to read
    fontsize = 9 if len(labels) <= 10 else 7
    for ax, values, title, fmt in ((axes[0], matrix, "Counts", "{:.0f}"),
                                   (axes[1], shares, "Row-normalised (recall)", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ticks = np.arange(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(ticks, labels, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        if annotate:
            top = values.max() or 1.0
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=fontsize,
                        color="white" if value > 0.6 * top else "black")
    fig.tight_layout()
    return _png(fig)


def per_class_bars(per_class: dict[str, dict[str, float]], labels: list[str]) -> bytes:
    """Grouped bars of precision, recall and F1 for each class."""
    metrics = ("precision", "recall", "f1")
    x = np.arange(len(labels))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.8))
    for k, metric in enumerate(metrics):
        values = [per_class[label][metric] for label in labels]
        ax.bar(x + (k - 1) * width, values, width, label=metric)
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 8 else 0, ha="right"
                  if len(labels) > 8 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=3, fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0),
              frameon=False)
    fig.tight_layout()
    return _png(fig)


def image_grid(images: np.ndarray, titles: list[str], columns: int = 8) -> bytes:
    """A grid of uint8 images, each titled (e.g. true/predicted label and confidence)."""
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.95 * rows), squeeze=False)
    _off(axes)
    for ax, image, title in zip(axes.ravel(), images, titles, strict=False):
        _show(ax, image)
        ax.set_title(title, fontsize=7.5)
    fig.tight_layout()
    return _png(fig)


def first_layer_filters(kernel: np.ndarray, columns: int = 12) -> bytes:
    """Conv kernels (kh, kw, in, out), each scaled to its own range; RGB when in == 3."""
    kernel = np.asarray(kernel, dtype=np.float32)
    count = kernel.shape[-1]
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(0.6 * columns, 0.8 * rows), squeeze=False)
    _off(axes)
    for k, ax in zip(range(count), axes.ravel(), strict=False):
        tile = kernel[..., k] if kernel.shape[2] == 3 else kernel[:, :, 0, k]
        low, high = tile.min(), tile.max()
        tile = (tile - low) / (high - low) if high > low else np.zeros_like(tile)
        ax.imshow(tile, cmap=None if tile.ndim == 3 else "gray", interpolation="nearest")
        ax.set_title(str(k), fontsize=7)
    fig.tight_layout(pad=0.3)
    return _png(fig)


def feature_maps(image: np.ndarray, layers: list[tuple[str, np.ndarray]],
                 channels: int = 8) -> bytes:
    """The input image, then the strongest ``channels`` maps of each (h, w, C) activation."""
    fig, axes = plt.subplots(len(layers), channels + 1,
                             figsize=(1.3 * (channels + 1), 1.5 * len(layers)), squeeze=False)
    _off(axes)
    for row, (name, activation) in enumerate(layers):
        _show(axes[row, 0], image)
        axes[row, 0].set_title("input", fontsize=8)
        strongest = np.argsort(activation.mean(axis=(0, 1)))[::-1][:channels]
        for col, c in enumerate(strongest, 1):
            axes[row, col].imshow(activation[..., c], cmap="viridis", interpolation="nearest")
            axes[row, col].set_title(f"{name}[{c}]", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def cam_gallery(rows: list[tuple[str, np.ndarray, dict[str, np.ndarray]]]) -> bytes:
    """Rows of (caption, uint8 image, {method: (h, w) map in [0, 1]}): the image, then each
    method's heatmap over it. Small images are upscaled (nearest) before the overlay, so the
    heatmap is drawn at a useful resolution."""
    methods = list(rows[0][2])
    fig, axes = plt.subplots(len(rows), len(methods) + 1,
                             figsize=(1.45 * (len(methods) + 1), 1.75 * len(rows)),
                             squeeze=False)
    _off(axes)
    for r, (caption, image, maps) in enumerate(rows):
        scale = max(1, CAM_SIZE // max(image.shape[:2]))
        big = image.repeat(scale, axis=0).repeat(scale, axis=1)
        axes[r, 0].imshow(big)
        axes[r, 0].set_title(caption, fontsize=8.5)
        height, width = big.shape[:2]
        for c, method in enumerate(methods, 1):
            heat = render.upsample(maps[method][None], height, width)[0]
            axes[r, c].imshow(render.overlay(big, heat, alpha=0.5))
            if r == 0:
                axes[r, c].set_title(method, fontsize=9)
    fig.tight_layout(h_pad=2.5)
    return _png(fig)
