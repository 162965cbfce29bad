import numpy as np
import pytest
import tensorflow as tf

from training.augment import (
    build_augmenter,
    color_jitter,
    cutmix,
    flip_and_shift,
    mixup,
    rotate_and_zoom,
)
from training.config import AugmentConfig

OFF = dict(flip=False, rotation=0.0, translation=0.0, zoom=0.0, brightness=0.0, contrast=0.0,
           saturation=0.0, hue=0.0)


def batch(n=8, size=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return tf.constant(images), tf.constant(labels)


def seed(i=0):
    return tf.constant([i, 7], dtype=tf.int64)


def test_flip_is_an_exact_mirror_or_identity():
    images, _ = batch(64)
    out = flip_and_shift(images, True, 0.0, "reflect", seed(1)).numpy()
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images.numpy(), strict=True)]
    same = [np.array_equal(o, i) for o, i in zip(out, images.numpy(), strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True))
    assert 10 < sum(mirrored) < 54  # about half are mirrored


def test_everything_off_is_identity():
    images, labels = batch()
    out, out_labels = build_augmenter(AugmentConfig(**OFF))(images, labels, seed())
    np.testing.assert_array_equal(out.numpy(), images.numpy())
    np.testing.assert_array_equal(out_labels.numpy(), labels.numpy())


@pytest.mark.parametrize(("fill_mode", "numpy_mode"), [
    ("reflect", "symmetric"), ("wrap", "wrap"), ("nearest", "edge"), ("constant", "constant")])
def test_a_shift_is_a_whole_pixel_crop_of_the_padded_image(fill_mode, numpy_mode):
    """Each image is its own padded copy cropped at an offset of at most 2 pixels per axis
    (0.125 x 16), airbench's random crop; every offset is drawn."""
    images, _ = batch(64, size=16)
    out = flip_and_shift(images, False, 0.125, fill_mode, seed(2)).numpy()
    padded = np.pad(images.numpy(), ((0, 0), (2, 2), (2, 2), (0, 0)), mode=numpy_mode)
    offsets = set()
    for i in range(64):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if np.array_equal(out[i], padded[i, dy:dy + 16, dx:dx + 16])]
        assert len(found) == 1, (i, found)
        offsets.add(found[0])
    assert len(offsets) > 15  # of the 25


@pytest.mark.parametrize(("rotation", "zoom"), [(15.0, 0.0), (0.0, 0.2), (15.0, 0.2)])
def test_rotation_and_zoom_change_pixels_keep_shape_and_follow_the_seed(rotation, zoom):
    images, _ = batch()
    out = rotate_and_zoom(images, rotation, zoom, "reflect", "bilinear", seed(3)).numpy()
    assert out.shape == images.shape
    assert not np.allclose(out, images.numpy())
    again = rotate_and_zoom(images, rotation, zoom, "reflect", "bilinear", seed(3)).numpy()
    np.testing.assert_array_equal(out, again)


def test_no_rotation_and_no_zoom_is_identity():
    images, _ = batch()
    out = rotate_and_zoom(images, 0.0, 0.0, "constant", "nearest", seed(4)).numpy()
    np.testing.assert_allclose(out, images.numpy(), atol=1e-4)


def test_a_zoom_out_shows_the_whole_image_inside_its_border():
    """A 1.0 zoom draws s in [0, 2]; a white square on black, zoomed, stays centred: the
    transform is about the image's centre, as Keras' is."""
    square = np.zeros((16, 33, 33, 3), np.float32)
    square[:, 12:21, 12:21] = 255.0
    out = rotate_and_zoom(tf.constant(square), 0.0, 1.0, "constant", "nearest", seed(5)).numpy()
    for image in out:
        rows, cols = np.nonzero(image[..., 0] > 127)
        assert rows.size and abs(rows.mean() - 16) < 0.6 and abs(cols.mean() - 16) < 0.6


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue"])
def test_color_jitter_stays_in_range_and_changes_each_image_differently(name):
    images, _ = batch(16)
    out = color_jitter(images, AugmentConfig(**{**OFF, name: 0.3}), seed()).numpy()
    assert out.min() >= 0 and out.max() <= 255
    change = np.abs(out - images.numpy()).mean(axis=(1, 2, 3))
    assert change.max() > 1.0 and change.std() > 0.05


def test_brightness_shift_is_bounded_by_the_factor():
    images = tf.fill([32, 4, 4, 3], 128.0)
    out = color_jitter(images, AugmentConfig(**{**OFF, "brightness": 0.1}), seed()).numpy()
    assert np.abs(out - 128).max() <= 0.1 * 255 + 1e-3


def test_mixup_labels_sum_to_one_and_blend_like_images():
    images, labels = batch(16)
    out, mixed = mixup(images, labels, alpha=0.4, seed=seed(3))
    np.testing.assert_allclose(mixed.numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert ((mixed.numpy() > 0).sum(axis=1) >= 1).all()
    assert not np.allclose(out.numpy(), images.numpy())


@pytest.mark.parametrize("step", range(5))
def test_cutmix_label_weights_equal_the_pasted_area(step):
    n, size = 8, 16
    # every image is a constant equal to its index, so the pasted area is visible per pixel
    images = tf.constant(np.arange(n, dtype=np.float32)[:, None, None, None]
                         * np.ones((1, size, size, 3), np.float32))
    labels = tf.constant(np.eye(n, dtype=np.float32))
    out, mixed = cutmix(images, labels, alpha=1.0, seed=seed(step))
    out, mixed = out.numpy(), mixed.numpy()
    for i in range(n):
        own = (out[i, :, :, 0] == i).mean()
        assert mixed[i, i] == pytest.approx(own, abs=1e-6)
        np.testing.assert_allclose(mixed[i].sum(), 1.0, rtol=1e-6)


def test_augmenter_is_deterministic_for_a_seed():
    images, labels = batch()
    config = AugmentConfig(mixup_alpha=0.2, cutmix_alpha=1.0)
    a = build_augmenter(config)(images, labels, seed(9))
    b = build_augmenter(config)(images, labels, seed(9))
    np.testing.assert_allclose(a[1].numpy(), b[1].numpy())


def test_geometric_augmentation_follows_the_batch_seed_alone():
    """The same augmenter twice on one seed gives the same images, and another seed others:
    no state is carried from call to call (Keras' layers carry it, and tf.data's parallel map
    calls raced on it)."""
    images, labels = batch(32)
    config = AugmentConfig(**{**OFF, "flip": True, "translation": 0.2, "rotation": 10.0,
                              "zoom": 0.1})
    augment = build_augmenter(config)
    first, again, other = (augment(images, labels, seed(i))[0].numpy() for i in (9, 9, 10))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
