"""Bring any decoded image to the model's input: upright, RGB, the card's height x width, uint8.

Training uses this same function when it reads image files, so a model never sees pixels turned,
flattened or resized one way in training and another way in serving. That is why everything
that changes pixels lives here, EXIF orientation included: ``decode.decode_image`` only checks
and opens the bytes.

Mode rules, applied in this order:

- EXIF orientation (tag 0x0112, values 2-8) is applied first, so the resize sees the photo the
  way its camera meant it.
- 16-bit greys (``I;16`` and its byte orders, and ``I``, Pillow's mode for 16-bit samples
  elsewhere) keep their high byte, ``v >> 8``, as Pillow does when it opens a 16-bit colour PNG,
  so 65535 -> 255. Pillow's own ``convert`` would clip: everything above 255 would turn white.
- Images with alpha (RGBA, LA, PA, RGBa, or P/L/RGB with a transparent colour) are composited over
  white. The colour stored under a transparent pixel is arbitrary (often black, sometimes leftover
  artwork) and the author never saw it; dropping alpha would show the model that noise. Any fixed
  background makes training and serving agree; white is what a page shows behind a logo or a
  product cut-out.
- Every other mode (1, L, P, CMYK, YCbCr, F, ...) goes through Pillow's ``convert("RGB")``; F is
  clipped to [0, 255] and truncated there: the pixel range raw float tensors use too.

Resizing is Pillow's bilinear filter (with its antialiasing when shrinking); standardisation is
not done here: it is the model's first layer.
"""

from __future__ import annotations

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = ["RESAMPLE", "to_model_input"]

RESAMPLE = Image.Resampling.BILINEAR

_HIGH_BIT_GREYS = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_TURNING_ORIENTATIONS = range(2, 9)  # 1 is upright; anything else is not a valid EXIF value
_BACKGROUND = (255, 255, 255)


def to_model_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """A decoded Pillow image of any mode, size and orientation -> (height, width, 3) uint8."""
    image = _upright(image)
    if image.mode in _HIGH_BIT_GREYS:
        image = _high_byte(image)
    if image.has_transparency_data:
        image = _over_background(image)
    elif image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; the same object (no copy) when upright.

    ``ImageOps.exif_transpose`` alone would copy every upright image; it also removes the tag
    from the turned copy, so a caller that already turned the image is not turned twice.
    """
    if image.getexif().get(ExifTags.Base.Orientation) in _TURNING_ORIENTATIONS:
        return ImageOps.exif_transpose(image)
    return image


def _high_byte(image: Image.Image) -> Image.Image:
    """16-bit greys -> L by keeping the high byte (a transparent colour, if any, is dropped)."""
    samples = np.clip(np.asarray(image), 0, 0xFFFF)  # (H, W) uint16 or int32
    return Image.fromarray((samples >> 8).astype(np.uint8))


def _over_background(image: Image.Image) -> Image.Image:
    """Composite an image with alpha or a transparent colour over the white background -> RGB."""
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _BACKGROUND)
    flat.paste(rgba, mask=rgba)  # an RGBA mask means "use its alpha band"
    return flat
