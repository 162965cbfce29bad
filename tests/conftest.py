"""Shared test set-up: quiet TensorFlow, small fixtures that build data on disk."""

import io
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/<n>.png with 3 classes x 10 images, each class a distinct colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 40, (20, 24, 3), dtype=np.uint8)
            pixels[..., c] += 200
            (tmp_path / name / f"{i}.png").write_bytes(encode(pixels))
    return tmp_path
