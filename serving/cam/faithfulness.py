"""Faithfulness metrics for saliency maps: pointing game, deletion curve, map correlation.

numpy only: the model is any ``predict(images) -> (M, K) probabilities`` callable, so the same
functions score a LiteRT interpreter in serving and a Keras model in tests.

- ``pointing_game``: Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop",
  https://arxiv.org/abs/1608.00507. A hit when a map's peak lies inside the object's box
  (optionally grown by ``tolerance`` pixels; the paper uses 15 px on 224 px images).
- ``deletion_curves`` / ``deletion_auc``: Petsiuk et al. 2018, "RISE: Randomized Input Sampling
  for Explanation of Black-box Models", https://arxiv.org/abs/1806.07421. The pixels are
  replaced by a neutral ``baseline`` image in falling saliency order, ``steps`` equal slices at a
  time, and the target-class probability is read after each slice. A faithful map makes the
  probability fall early: a lower area under the curve is better.
- ``map_correlation``: per-image Pearson or Spearman correlation of two batches of maps, the
  similarity measure of Adebayo et al. 2018, "Sanity Checks for Saliency Maps",
  https://arxiv.org/abs/1810.03292.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = [
    "deletion_auc",
    "deletion_curves",
    "deletion_order",
    "map_correlation",
    "top_region_overlap",
    "peaks",
    "pointing_game",
]

Predict = Callable[[np.ndarray], np.ndarray]
TIE = 1e-6  # values within this fraction of a map's maximum count as the maximum


def peaks(maps: np.ndarray) -> np.ndarray:
    """(N, H, W) maps -> (N, 2) integer (y, x) of each map's maximum; (-1, -1) for a flat map,
    which points nowhere.

    Several pixels can share the maximum: an upsampled map is flat between its outermost cell
    centres and the border, where the filter clamps, so a peak in an edge cell is a plateau that
    reaches the border. Of the tied pixels the peak is the one nearest the map's centre of mass
    (the inner end of such a plateau: the cell's centre), not the first in raster order, which
    would always be the plateau's top-left corner.
    """
    maps = _maps(maps).astype(np.float64)
    n, height, width = maps.shape
    flat = maps.reshape(n, -1)
    high, low = flat.max(axis=1), flat.min(axis=1)
    out = np.full((n, 2), -1, dtype=np.int64)
    ys, xs = np.divmod(np.arange(height * width), width)
    for i in np.flatnonzero(high - low > TIE * np.maximum(np.abs(high), 1e-300)):
        tied = np.flatnonzero(flat[i] >= high[i] - TIE * abs(high[i]))
        mass = flat[i] - low[i]
        cy, cx = (mass @ ys) / mass.sum(), (mass @ xs) / mass.sum()
        best = tied[np.argmin((ys[tied] - cy) ** 2 + (xs[tied] - cx) ** 2)]
        out[i] = ys[best], xs[best]
    return out


def pointing_game(maps: np.ndarray, boxes: np.ndarray, tolerance: int = 0) -> np.ndarray:
    """(N,) bool: the peak of map i lies in box i, (x0, y0, x1, y1) with x1 and y1 exclusive,
    grown by ``tolerance`` pixels on every side. A flat map has no peak: a miss."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != len(maps):
        raise ValueError(f"boxes must be (N, 4) for {len(maps)} maps; got shape {boxes.shape}")
    y, x = peaks(maps).T
    x0, y0, x1, y1 = boxes.T
    return ((x >= 0) & (x0 - tolerance <= x) & (x < x1 + tolerance)
            & (y0 - tolerance <= y) & (y < y1 + tolerance))


def deletion_order(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, H, W) maps -> (N, H*W) flat pixel indices, most salient first. Ties (a map's flat
    zero region, say) are broken in a seeded random order, not in raster order, which would
    delete the top rows first and favour whichever map has the larger ties."""
    maps = _maps(maps)
    n = len(maps)
    flat = maps.reshape(n, -1).astype(np.float64)
    jitter = np.random.default_rng(seed).random(flat.shape)
    # lexsort sorts by the last key first: saliency descending, then the random tie-breaker.
    return np.stack([np.lexsort((jitter[i], -flat[i])) for i in range(n)])


def deletion_curves(predict: Predict, images: np.ndarray, baselines: np.ndarray,
                    maps: np.ndarray, targets: np.ndarray, steps: int = 16,
                    seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """(N, steps + 1) target-class probability after deleting 0, 1/steps, ..., all pixels.

    ``images`` and ``baselines`` are (N, H, W, C) in the model's input dtype; ``maps`` (N, H, W)
    are at the image's size (upsample CAMs first); ``targets`` (N,) the classes to follow.
    """
    images, baselines = np.asarray(images), np.asarray(baselines)
    n, height, width = images.shape[:3]
    if baselines.shape != images.shape:
        raise ValueError(f"baselines shape {baselines.shape} != images shape {images.shape}")
    if np.shape(maps) != (n, height, width):
        raise ValueError(f"maps must be (N, H, W) = {(n, height, width)}; got {np.shape(maps)}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1; got {steps}")
    targets = np.asarray(targets)
    order = deletion_order(maps, seed)
    pixels = height * width
    counts = np.rint(np.linspace(0, pixels, steps + 1)).astype(int)  # deleted after each step
    # rank[i, p]: position of pixel p in image i's deletion order; deleted after step k iff
    # rank < counts[k].
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(pixels)[None], axis=1)
    curves = np.empty((n, steps + 1), dtype=np.float64)
    per_batch = max(1, batch_size // (steps + 1))
    for start in range(0, n, per_batch):
        stop = min(start + per_batch, n)
        deleted = rank[start:stop, None, :] < counts[None, :, None]  # (b, steps + 1, pixels)
        deleted = deleted.reshape(stop - start, steps + 1, height, width, 1)
        batch = np.where(deleted, baselines[start:stop, None], images[start:stop, None])
        probabilities = np.asarray(predict(batch.reshape(-1, *images.shape[1:])))
        probabilities = probabilities.reshape(stop - start, steps + 1, -1)
        curves[start:stop] = np.take_along_axis(
            probabilities, targets[start:stop, None, None], axis=2)[..., 0]
    return curves


def deletion_auc(curves: np.ndarray) -> np.ndarray:
    """(N, K) curves over K evenly spaced deleted fractions 0..1 -> (N,) trapezoid areas."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be (N, K >= 2); got shape {curves.shape}")
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * (curves.shape[1] - 1))


def map_correlation(a: np.ndarray, b: np.ndarray, method: str = "pearson") -> np.ndarray:
    """(N,) correlation of map a[i] with map b[i] over pixels; NaN where either is constant.
    ``spearman`` correlates ranks (ties share their mean rank)."""
    a, b = _maps(a), _maps(b)
    if a.shape != b.shape:
        raise ValueError(f"map shapes differ: {a.shape} vs {b.shape}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman'; got {method!r}")
    x = a.reshape(len(a), -1).astype(np.float64)
    y = b.reshape(len(b), -1).astype(np.float64)
    if method == "spearman":
        x, y = _ranks(x), _ranks(y)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    norm = np.sqrt((x**2).sum(axis=1) * (y**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=1) / norm
    # a constant map has zero variance; float noise can leave a tiny non-zero norm
    scale = np.maximum(np.abs(a.reshape(len(a), -1)).max(axis=1),
                       np.abs(b.reshape(len(b), -1)).max(axis=1))
    flat = (np.ptp(a.reshape(len(a), -1), axis=1) <= 1e-12 * scale) | (
        np.ptp(b.reshape(len(b), -1), axis=1) <= 1e-12 * scale) | (norm == 0)
    return np.where(flat, np.nan, np.clip(r, -1.0, 1.0))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise ranks 0..P-1, ties given their mean rank."""
    out = np.empty_like(values)
    for i, row in enumerate(values):
        _, inverse, counts = np.unique(row, return_inverse=True, return_counts=True)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out[i] = (starts + (counts - 1) / 2.0)[inverse]
    return out


def _maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(f"maps must be a non-empty 3-D (N, H, W) array; got shape {maps.shape}")
    return maps


def top_region_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """Per-image intersection over union of the two maps' top ``fraction`` of pixels: do two
    models look at the same place? 1 for the same region; about 0.11 by chance at 0.2."""
    a, b = _maps(a), _maps(b)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} and {b.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction}")
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    keep = max(1, int(round(fraction * flat_a.shape[1])))
    top_a = np.zeros(flat_a.shape, bool)
    top_b = np.zeros(flat_b.shape, bool)
    np.put_along_axis(top_a, np.argpartition(-flat_a, keep - 1, axis=1)[:, :keep], True, axis=1)
    np.put_along_axis(top_b, np.argpartition(-flat_b, keep - 1, axis=1)[:, :keep], True, axis=1)
    return (top_a & top_b).sum(axis=1) / (top_a | top_b).sum(axis=1)
