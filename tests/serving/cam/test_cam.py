import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest

from serving.cam import METHODS, BaseCAM, get_method
from tests.conftest import ROOT

BOXES = [(1, 4, 5, 8), (4, 7, 0, 3), (2, 5, 2, 5)]  # (top, bottom, left, right) per image


def box_batch() -> tuple[np.ndarray, np.ndarray]:
    """Channel 0 is an "object" that fires only inside each image's box and raises the score."""
    rng = np.random.default_rng(0)
    acts = rng.uniform(0.0, 0.5, (len(BOXES), 8, 8, 4)).astype(np.float32)
    grads = rng.normal(0.0, 0.05, acts.shape).astype(np.float32)
    acts[..., 0] = 0.1
    grads[..., 0] += 1.0
    for n, (top, bottom, left, right) in enumerate(BOXES):
        acts[n, top:bottom, left:right, 0] = 5.0
    return acts, grads


def run(method: BaseCAM, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(action="error"), np.errstate(all="raise"):
        return method(acts, grads)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_contract(name):
    method = get_method(name)
    assert isinstance(method, METHODS[name]) and method.name == name
    acts, grads = box_batch()
    maps = run(method, acts, grads)
    assert maps.shape == acts.shape[:3] and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    for n, (top, bottom, left, right) in enumerate(BOXES):
        alone = run(method, acts[n : n + 1], grads[n : n + 1])
        np.testing.assert_allclose(alone[0], maps[n], atol=1e-6)
        row, col = np.unravel_index(np.argmax(maps[n]), maps[n].shape)
        assert top <= row < bottom and left <= col < right, (name, n, row, col)


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("fill", [0.0, 2.0])
def test_flat_maps_are_zero(name, fill):
    acts = np.full((2, 3, 3, 2), fill, dtype=np.float32)
    maps = run(get_method(name), acts, np.ones_like(acts))
    assert maps.shape == (2, 3, 3) and not maps.any()


# By hand, (1, 2, 2, 2): A0 = [[1, 2], [3, 4]], A1 = [[4, 3], [2, 1]]; G0 = 1, G1 = -2 at (1, 1).
TINY_A = np.stack([[[1, 2], [3, 4]], [[4, 3], [2, 1]]], axis=-1)[None].astype(np.float32)
TINY_G = np.stack([np.ones((2, 2)), [[0, 0], [0, -2]]], axis=-1)[None].astype(np.float32)


@pytest.mark.parametrize(
    "name, expected",
    [
        # weights (1, -0.5): A0 - A1 / 2 = [[-1, 0.5], [2, 3.5]] -> relu -> / 3.5
        ("gradcam", [[0, 1 / 7], [4 / 7, 1]]),
        # G * A summed over channels: [[1, 2], [3, 4 - 2]] -> (x - 1) / 2
        ("hirescam", [[0, 0.5], [1, 0.5]]),
        # relu(G) * A summed: A0 = [[1, 2], [3, 4]] -> (x - 1) / 3
        ("layercam", [[0, 1 / 3], [2 / 3, 1]]),
    ],
)
def test_hand_computed(name, expected):
    np.testing.assert_allclose(get_method(name)(TINY_A, TINY_G)[0], expected, atol=1e-6)


def loopy_weights(name: str, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM++ and XGrad-CAM weights, one number at a time."""
    n_images, h, w, channels = acts.shape
    positions = list(itertools.product(range(h), range(w)))
    weights = np.zeros((n_images, channels))
    for n, c in itertools.product(range(n_images), range(channels)):
        total = sum(float(acts[n, i, j, c]) for i, j in positions)
        for i, j in positions:
            g, a = float(grads[n, i, j, c]), float(acts[n, i, j, c])
            if name == "xgradcam":
                weights[n, c] += g * a / (total + 1e-7)
            elif g != 0:
                weights[n, c] += max(g, 0.0) * g**2 / (2 * g**2 + total * g**3 + 1e-6)
    return weights


@pytest.mark.parametrize("name", ["gradcam++", "xgradcam"])
def test_weights_match_the_equations(name):
    rng = np.random.default_rng(1)
    acts = np.maximum(rng.normal(0.3, 1.0, (2, 3, 4, 5)), 0.0)
    grads = rng.normal(0.0, 1.0, acts.shape) * (rng.random(acts.shape) > 0.2)
    expected = loopy_weights(name, acts, grads)
    np.testing.assert_allclose(get_method(name).channel_weights(acts, grads), expected, rtol=1e-9)
    maps = np.maximum(np.einsum("nhwc,nc->nhw", acts, expected), 0.0)
    maps -= maps.min(axis=(1, 2), keepdims=True)
    maps /= maps.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(get_method(name)(acts, grads), maps, atol=1e-6)


@pytest.mark.parametrize("invert", [False, True])
def test_eigencam_is_the_signed_first_component(invert):
    acts = np.random.default_rng(2).random((2, 4, 5, 6))
    acts = 1.0 - acts if invert else acts  # negates the centred matrix
    for n in range(2):
        flat = acts[n].reshape(20, 6)
        centred = flat - flat.mean(axis=0)
        projection = centred @ np.linalg.svd(centred)[2][0]
        projection *= np.sign(projection @ flat.mean(axis=1))
        expected = np.maximum(projection, 0.0) / np.maximum(projection, 0.0).max()
        np.testing.assert_allclose(get_method("eigencam")(acts)[n].ravel(), expected, atol=1e-6)


@pytest.mark.parametrize(
    "acts, grads, message",
    [
        (np.ones((3, 3, 2)), np.ones((3, 3, 2)), r"4-D .*\(3, 3, 2\)"),
        (np.ones((0, 3, 3, 2)), np.ones((0, 3, 3, 2)), r"non-empty .*\(0, 3, 3, 2\)"),
        (np.ones((1, 3, 3, 2)), np.ones((1, 3, 3, 1)), r"gradients shape \(1, 3, 3, 1\) != "),
        (np.ones((1, 3, 3, 2)), None, "'gradcam' needs gradients"),
        (np.full((1, 3, 3, 2), np.nan), np.ones((1, 3, 3, 2)), "activations contain NaN"),
        (np.ones((1, 3, 3, 2)), np.full((1, 3, 3, 2), np.inf), "gradients contain NaN"),
    ],
)
def test_bad_inputs(acts, grads, message):
    with pytest.raises(ValueError, match=message):
        get_method("gradcam")(acts, grads)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown CAM method 'nope'; known: gradcam, ") as info:
        get_method("nope")
    assert all(name in str(info.value) for name in METHODS)


def test_imports_no_tensorflow():
    code = (
        "import serving.cam, serving.cam.render, sys; "
        "assert not any(m.startswith(('tensorflow', 'keras')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_gradient_constant_over_positions_may_come_compact(name):
    """GAP heads hand over (N, 1, 1, C) gradients; every method must read them as the full,
    repeated (N, h, w, C) array."""
    rng = np.random.default_rng(5)
    activations = rng.random((3, 4, 5, 6))
    compact = rng.normal(size=(3, 1, 1, 6))
    full = np.broadcast_to(compact, activations.shape).copy()
    method = get_method(name)
    np.testing.assert_allclose(method(activations, compact), method(activations, full), atol=1e-6)
    assert method(activations, compact).std() > 0
