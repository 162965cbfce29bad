"""Shapes: Sightline's built-in synthetic image-classification dataset, drawn in code.

Each image holds one object of a class in ``CLASS_NAMES`` at a random position, size (35-75 % of
the side), rotation and colour, over a noisy background of smooth colour blobs with clutter (thin
line segments and specks that belong to no class). It is the default dataset of the demo and the
tests, never downloaded, and its boxes are the ground truth for Grad-CAM localisation checks.

Guarantees:

- Deterministic: image ``i`` depends only on ``(seed, i, image_size)``, so ``generate(n)`` is a
  prefix of ``generate(m)`` for ``n < m``, and the same call gives the same bytes on every run
  (with the pinned numpy and Pillow).
- Balanced: the label of image ``i`` is ``i % len(CLASS_NAMES)``.
- The object lies fully inside the image, its colour is at least ``MIN_CONTRAST`` away from the
  mean background under it, and clutter can cross it but not hide it (lines are 1/32 of the side
  wide, specks at most 1/16 across, the object's circle at least 35 %).
- ``boxes`` are tight around the object's mask at final resolution: the pixels it covers at least
  half, whether or not clutter lies on top of them.

numpy + Pillow only (no TensorFlow), one core: 6000 images of 32 px take about 3-5 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASS_NAMES", "ShapesData", "generate", "render"]

# Shapes that stay distinct under any rotation: no diamond (a turned square), no hexagon (a circle
# at 16 px).
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 224
MIN_CONTRAST = 120.0  # RGB distance, object vs mean background under it (black to white is 441)


def _star() -> np.ndarray:
    angles = np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (10, 2)


def _turn(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])  # (2, 2)


def _cross(w: float = 0.3) -> np.ndarray:
    a = np.sqrt(1 - w**2)  # arm length that puts the arm corners on the unit circle
    arm = np.array([(a, -w), (a, w), (w, w)])  # an arm's end and the inner corner after it
    return np.concatenate([arm @ _turn(k * np.pi / 2).T for k in range(4)])  # (12, 2)


def _regular(n: int) -> np.ndarray:
    angles = np.arange(n) * 2 * np.pi / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)  # (n, 2)


# Polygon vertices inside the unit circle; render scales, turns and moves them.
_POLYGONS = {"square": _regular(4), "triangle": _regular(3), "star": _star(), "cross": _cross()}
_RING_HOLE = 0.55  # inner radius of a ring over its outer radius: a hole still visible at 16 px


@dataclass(frozen=True)
class ShapesData:
    """A generated dataset: row i of each array describes image i."""

    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int32, index into CLASS_NAMES
    boxes: np.ndarray  # (N, 4) int32, (x0, y0, x1, y1) in pixels, x1 and y1 exclusive


def generate(count: int, image_size: int = 32, seed: int = 0) -> ShapesData:
    """Render images 0 .. count-1; each is independent of the others (see render)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    _check_image_size(image_size)
    images = np.empty((count, image_size, image_size, 3), np.uint8)
    labels = np.empty(count, np.int32)
    boxes = np.empty((count, 4), np.int32)
    for i in range(count):
        images[i], labels[i], boxes[i] = render(i, image_size, seed)
    return ShapesData(images=images, labels=labels, boxes=boxes)


def render(index: int, image_size: int, seed: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Draw image ``index`` from its own random stream, so any image can be rendered alone.

    Returns the image (S, S, 3) uint8, its label and its box (4,) int32 as in ShapesData.
    """
    _check_image_size(image_size)
    rng = np.random.default_rng([seed, index])
    label = index % len(CLASS_NAMES)
    # Draw at `scale` times the final size, then average each scale x scale block (BOX): edges
    # come out antialiased, each pixel blending object and background by the area it covers.
    scale = max(2, min(4, 256 // image_size))
    big = image_size * scale
    canvas = _background(rng, big)
    radius = rng.uniform(0.35, 0.75) * big / 2  # of the circle the object fits in
    centre = rng.uniform(radius, big - radius, size=2)  # keeps that circle inside the image
    angle = rng.uniform(0, 2 * np.pi)
    mask = Image.new("L", (big, big), 0)  # 255 where the object is
    _draw_object(ImageDraw.Draw(mask), CLASS_NAMES[label], centre, radius, angle)
    canvas.paste(_object_colour(rng, canvas, mask), mask=mask)
    _draw_clutter(rng, ImageDraw.Draw(canvas), big)

    final = (image_size, image_size)
    image = np.asarray(canvas.resize(final, Image.Resampling.BOX), np.float32)  # (S, S, 3)
    image += rng.normal(0.0, rng.uniform(3.0, 15.0), image.shape)  # sensor-like per-pixel noise
    covered = np.asarray(mask.resize(final, Image.Resampling.BOX)) >= 128  # (S, S) bool, >= half
    ys, xs = np.nonzero(covered)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.int32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label, box


def _check_image_size(image_size: int) -> None:
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {image_size}"
        )


def _background(rng: np.random.Generator, big: int) -> Image.Image:
    """Smooth colour blobs around a random base colour: texture without edges that form shapes."""
    cells = int(rng.integers(2, 6))
    base = rng.uniform(0, 255, 3)
    grid = np.clip(base + rng.uniform(-70, 70, (cells, cells, 3)), 0, 255)  # (cells, cells, 3)
    return Image.fromarray(grid.astype(np.uint8)).resize((big, big), Image.Resampling.BICUBIC)


def _draw_object(
    draw: ImageDraw.ImageDraw, name: str, centre: np.ndarray, radius: float, angle: float
) -> None:
    """Fill the object's mask (255 inside); the angle turns polygons and leaves disks alone."""
    if name in ("circle", "ring"):
        draw.ellipse([*(centre - radius), *(centre + radius)], fill=255)
        if name == "ring":
            hole = radius * _RING_HOLE
            draw.ellipse([*(centre - hole), *(centre + hole)], fill=0)
        return
    points = _POLYGONS[name] @ _turn(angle).T * radius + centre  # (k, 2) pixel coordinates
    draw.polygon([tuple(p) for p in points], fill=255)


def _object_colour(rng: np.random.Generator, canvas: Image.Image, mask: Image.Image) -> tuple:
    """A random colour that stands out from the background under the object."""
    under = np.asarray(canvas)[np.asarray(mask) >= 128].mean(axis=0)  # (3,)
    # 16 random colours, then the RGB cube corner opposite `under`: at least 221 away, a sure pick.
    candidates = np.vstack([rng.integers(0, 256, (16, 3)), np.where(under < 128, 255, 0)])
    distance = np.linalg.norm(candidates - under, axis=1)  # (17,)
    first_far_enough = np.argmax(distance >= MIN_CONTRAST)
    return tuple(int(c) for c in candidates[first_far_enough])


def _draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, big: int) -> None:
    """Short thin segments and specks in random colours: edges and dots that belong to no class.

    Sizes are fractions of the side, so clutter looks the same at every image size.
    """
    unit = big / 32  # one final pixel of a 32 px image
    for _ in range(int(rng.integers(1, 5))):
        start = rng.uniform(0, big, 2)
        length, direction = rng.uniform(0.2, 0.6) * big, rng.uniform(0, 2 * np.pi)
        end = start + length * np.array([np.cos(direction), np.sin(direction)])
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line([*start, *end], fill=colour, width=max(1, round(unit)))
    for _ in range(int(rng.integers(2, 9))):
        centre, r = rng.uniform(0, big, 2), rng.uniform(0.4, 1.0) * unit
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([*(centre - r), *(centre + r)], fill=colour)
