import io

import numpy as np
import pytest
from PIL import Image

from serving.cam.render import INFERNO, colorize, overlay, to_png, upsample
from serving.image.preprocess import RESAMPLE


def test_upsample_keeps_a_constant():
    maps = np.full((2, 5, 6), 0.3, dtype=np.float32)
    out = upsample(maps, 20, 30)
    assert out.shape == (2, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_upsample_keeps_the_peak_in_place():
    maps = np.zeros((1, 7, 7), dtype=np.float32)
    maps[0, 2, 5] = 1.0
    out = upsample(maps, 112, 224)[0]  # 16x down, 32x across
    row, col = np.unravel_index(np.argmax(out), out.shape)
    assert abs(row - (2.5 * 16 - 0.5)) <= 1 and abs(col - (5.5 * 32 - 0.5)) <= 1
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_upsample_rejects_a_single_map():
    with pytest.raises(ValueError, match=r"3-D .*\(7, 7\)"):
        upsample(np.zeros((7, 7)), 14, 14)


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ [0.2126, 0.7152, 0.0722]


def test_colorize_is_inferno_and_monotone():
    colours = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]]))
    assert colours.shape == (1, 5, 3) and colours.dtype == np.uint8
    assert (colours[0, 0] == colours[0, 1]).all() and (colours[0, 3] == colours[0, 4]).all()
    assert (colours[0, 1] == INFERNO[0]).all() and (colours[0, 3] == INFERNO[255]).all()
    assert (colours[0, 1] != colours[0, 3]).any()
    assert (np.diff(relative_luminance(INFERNO.astype(float))) > 0).all()


def test_overlay():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    cam = rng.random((6, 9)).astype(np.float32)
    blended = overlay(image, cam)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    assert (overlay(image, cam, alpha=0.0) == image).all()
    assert (overlay(image, cam, alpha=1.0) == colorize(cam)).all()
    with pytest.raises(ValueError, match=r"map shape \(6, 8\)"):
        overlay(image, cam[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), cam)


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7), (1, 1, 4), (64, 3, 3)])
def test_to_png_round_trips(shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    data = to_png(array)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # checks every chunk's CRC and the zlib stream
    assert (np.asarray(decoded) == array).all()


@pytest.mark.parametrize("array", [np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4, 3), np.uint8),
                                   np.zeros((4, 4, 3), np.float32)])
def test_to_png_rejects_what_png_cannot_hold(array):
    with pytest.raises(ValueError, match="to_png"):
        to_png(array)


@pytest.mark.parametrize(("size", "new_size"), [(3, 32), (7, 224), (4, 4), (16, 5)])
def test_upsample_matches_pillows_bilinear_resize(size, new_size):
    maps = np.random.default_rng(2).random((2, size, size + 1)).astype(np.float32)
    out = upsample(maps, new_size, new_size + 3)
    for cam, got in zip(maps, out, strict=True):
        want = np.asarray(Image.fromarray(cam).resize((new_size + 3, new_size), RESAMPLE))
        np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-5)
