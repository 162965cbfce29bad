"""Bring any decoded image to the model's input: RGB, the card's height x width, uint8 pixels.

Training uses this same function when it reads image files, so a model never sees pixels
resized one way in training and another way in serving. Resizing is Pillow's bilinear filter
(with its antialiasing when shrinking); standardisation is not done here: it is the model's
first layer.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["RESAMPLE", "to_model_input"]

RESAMPLE = Image.Resampling.BILINEAR


def to_model_input(image: Image.Image, height: int, width: int) -> np.ndarray:
    """A decoded Pillow image of any mode and size -> (height, width, 3) uint8."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)
