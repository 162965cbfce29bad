"""Render CAM maps for people: upsample to the image, colour, blend, encode as PNG.

``upsample`` brings (N, h, w) maps in [0, 1] to the model input's size with Pillow's bilinear
filter on float ("F") images, the same filter the server resizes images with
(``serving.pipeline.preprocess.RESAMPLE``). ``colorize`` maps [0, 1] to RGB through "inferno",
matplotlib's perceptually uniform colour map (dark purple to pale yellow, lightness increasing
throughout), as a 256-entry lookup table interpolated linearly between 17 of its colours.
``overlay`` blends that over the image and ``to_png`` encodes any uint8 image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serving.pipeline.preprocess import RESAMPLE

__all__ = ["INFERNO", "PNG_LEVEL", "colorize", "overlay", "to_png", "upsample"]

# matplotlib's inferno sampled at 0, 1/16, ..., 1 (sRGB, 0-255).
_ANCHORS = np.array(
    [
        (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110),
        (138, 34, 106), (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49),
        (241, 115, 29), (249, 142, 9), (252, 172, 17), (249, 203, 53), (242, 234, 105),
        (252, 255, 164),
    ],
    dtype=np.float64,
)  # fmt: skip
_AT = np.linspace(0.0, 1.0, len(_ANCHORS))
_LEVELS = np.linspace(0.0, 1.0, 256)
INFERNO = np.rint(
    np.stack([np.interp(_LEVELS, _AT, _ANCHORS[:, k]) for k in range(3)], axis=1)
).astype(np.uint8)
INFERNO.flags.writeable = False

# zlib level 1: about 4x faster than Pillow's default 6 on a 224x224 overlay, ~30% more bytes.
PNG_LEVEL = 1


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) maps in [0, 1] -> (N, height, width) float32 in [0, 1], bilinear."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be 3-D (N, h, w); got shape {maps.shape}")
    out = np.empty((len(maps), height, width), dtype=np.float32)
    for i, cam in enumerate(maps):
        out[i] = np.asarray(Image.fromarray(cam).resize((width, height), RESAMPLE))
    return np.clip(out, 0.0, 1.0, out=out)


def colorize(cam: np.ndarray) -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 3) uint8 inferno colours; values outside are clipped."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"a map to colour must be 2-D (H, W); got shape {cam.shape}")
    return INFERNO[np.rint(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(1 - alpha) * image + alpha * colorize(cam), as (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be (H, W, 3) uint8; got shape {image.shape} dtype {image.dtype}"
        )
    if np.shape(cam) != image.shape[:2]:
        raise ValueError(f"map shape {np.shape(cam)} != image size {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colorize(cam).astype(np.float32)
    return np.rint(blend).astype(np.uint8)


def to_png(array: np.ndarray) -> bytes:
    """A (H, W) or (H, W, 3) uint8 array as PNG bytes, compressed for speed over size."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_LEVEL)
    return buffer.getvalue()
