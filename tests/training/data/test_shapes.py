"""The built-in shapes dataset: deterministic, balanced, hard to shortcut, with true boxes."""

import numpy as np
import pytest

from training.data import shapes

SIZE = 32
NUM_CLASSES = len(shapes.CLASS_NAMES)
# Classes whose box centre lies on the object (a ring's is in its hole, a triangle's may miss it).
SOLID = [shapes.CLASS_NAMES.index(name) for name in ("circle", "square", "star", "cross")]


@pytest.fixture(scope="module")
def data() -> shapes.ShapesData:
    return shapes.generate(600, SIZE, seed=0)


def test_class_names_are_at_least_six_distinct_shapes():
    assert len(shapes.CLASS_NAMES) >= 6
    assert len(set(shapes.CLASS_NAMES)) == len(shapes.CLASS_NAMES)


def test_arrays_have_documented_shapes_and_dtypes(data):
    assert data.images.shape == (600, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert data.labels.shape == (600,) and data.labels.dtype == np.int32
    assert data.boxes.shape == (600, 4) and data.boxes.dtype == np.int32


def test_same_call_gives_same_bytes():
    first, second = shapes.generate(30, SIZE, seed=7), shapes.generate(30, SIZE, seed=7)
    for name in ("images", "labels", "boxes"):
        assert getattr(first, name).tobytes() == getattr(second, name).tobytes()


def test_a_shorter_run_is_a_prefix_and_render_matches_generate(data):
    prefix = shapes.generate(50, SIZE, seed=0)
    np.testing.assert_array_equal(prefix.images, data.images[:50])
    np.testing.assert_array_equal(prefix.labels, data.labels[:50])
    np.testing.assert_array_equal(prefix.boxes, data.boxes[:50])
    image, label, box = shapes.render(123, SIZE, seed=0)
    np.testing.assert_array_equal(image, data.images[123])
    assert label == data.labels[123]
    np.testing.assert_array_equal(box, data.boxes[123])


def test_different_seeds_give_different_images():
    a, b = shapes.generate(12, SIZE, seed=0), shapes.generate(12, SIZE, seed=1)
    assert all((x != y).any() for x, y in zip(a.images, b.images, strict=True))
    assert (a.boxes != b.boxes).any()
    np.testing.assert_array_equal(a.labels, b.labels)  # labels depend on the index only


def test_labels_cycle_through_the_classes(data):
    np.testing.assert_array_equal(data.labels, np.arange(600) % NUM_CLASSES)
    assert (np.bincount(data.labels, minlength=NUM_CLASSES) == 600 // NUM_CLASSES).all()


def test_boxes_are_inside_the_image_and_sized_like_the_object(data):
    x0, y0, x1, y1 = data.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= SIZE).all() and (y1 <= SIZE).all()
    longest = np.maximum(x1 - x0, y1 - y0)
    # Objects fit a circle of 35-75 % of the side; a turned triangle spans at least 3/4 of it.
    assert longest.min() >= 0.25 * SIZE and longest.max() <= 0.75 * SIZE + 1


def _estimated_box(image: np.ndarray, box: np.ndarray, margin: int = 2) -> np.ndarray:
    """Tight box of the pixels near `box` that look like the object, not the background.

    Object colour: median of the 3x3 pixels at the box centre. Background: median of a frame
    just outside the search area. A pixel counts if it lies on the background-object colour
    line past the midpoint (at least half covered), which ignores clutter of other colours.
    """
    image = image.astype(np.float64)  # (S, S, 3)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    obj = np.median(image[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3), axis=0)  # (3,)
    sx0, sy0 = max(x0 - margin, 0), max(y0 - margin, 0)
    sx1, sy1 = min(x1 + margin, SIZE), min(y1 + margin, SIZE)
    search = np.zeros((SIZE, SIZE), bool)
    search[sy0:sy1, sx0:sx1] = True
    frame = np.zeros((SIZE, SIZE), bool)
    frame[max(sy0 - 2, 0) : sy1 + 2, max(sx0 - 2, 0) : sx1 + 2] = True
    bg = np.median(image[frame & ~search], axis=0)  # (3,)
    along = (image - bg) @ (obj - bg) / ((obj - bg) @ (obj - bg))  # (S, S), 0 bg .. 1 object
    off_line = np.linalg.norm(image - bg - along[..., None] * (obj - bg), axis=-1)  # (S, S)
    ys, xs = np.nonzero(search & (along >= 0.5) & (off_line < 40))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def test_boxes_are_tight_around_the_drawn_object(data):
    """Boxes found again from the pixels agree with the given ones, coordinate by coordinate.

    Noise, background texture and clutter make single pixels ambiguous, so this asks for most
    coordinates to match exactly; a box off by one pixel on any side matches for only ~2 %.
    """
    solid = np.isin(data.labels, SOLID)
    given = data.boxes[solid]
    found = np.array(
        [_estimated_box(im, b) for im, b in zip(data.images[solid], given, strict=True)]
    )
    exact = (found == given).mean(axis=0)  # (4,) per coordinate
    assert (exact >= 0.7).all(), exact
    assert (np.abs((found - given).mean(axis=0)) < 0.3).all()


def test_object_stands_out_from_its_surroundings(data):
    """The object's colour (at the box centre) is far from the background around the box."""
    contrast = []
    for image, label, (x0, y0, x1, y1) in zip(data.images, data.labels, data.boxes, strict=True):
        if label not in SOLID:
            continue
        image = image.astype(np.float64)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        centre = np.median(image[cy - 1 : cy + 2, cx - 1 : cx + 2].reshape(-1, 3), axis=0)
        outside = np.ones((SIZE, SIZE), bool)
        outside[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
        contrast.append(np.linalg.norm(centre - np.median(image[outside], axis=0)))
    # The background varies, so a few objects meet a similar colour away from themselves.
    assert min(contrast) > 40 and np.mean(np.array(contrast) > 80) >= 0.98


def test_mean_colour_and_class_templates_are_near_chance(data):
    """No shortcut: nearest class mean on mean RGB, or on raw pixels, does not beat chance much."""
    train, test = slice(0, 300), slice(300, 600)
    pixels = data.images.astype(np.float64)
    for features in (pixels.mean(axis=(1, 2)), pixels.reshape(600, -1)):  # (600, 3), (600, S*S*3)
        labels = data.labels[train]
        means = np.stack([features[train][labels == k].mean(0) for k in range(NUM_CLASSES)])
        distance = ((features[test][:, None] - means[None]) ** 2).sum(-1)  # (300, classes)
        accuracy = (distance.argmin(1) == data.labels[test]).mean()
        assert accuracy < 1 / NUM_CLASSES + 0.1, accuracy


def test_backgrounds_are_textured_and_objects_vary(data):
    flat = data.images.reshape(600, -1, 3).astype(np.float64)
    assert (flat.std(axis=1).mean(axis=1) > 10).all()  # no flat backgrounds
    centres = (data.boxes[:, :2] + data.boxes[:, 2:]) / 2
    assert (centres.std(axis=0) > 0.1 * SIZE).all()
    longest = np.maximum(*(data.boxes[:, 2:] - data.boxes[:, :2]).T)
    assert longest.max() - longest.min() >= 0.35 * SIZE


@pytest.mark.parametrize("size", [shapes.MIN_IMAGE_SIZE, 48, shapes.MAX_IMAGE_SIZE])
def test_any_size_in_range_renders(size):
    image, _, box = shapes.render(5, size, seed=0)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size


@pytest.mark.parametrize("size", [0, 15, 225])
def test_image_size_out_of_range_is_refused(size):
    with pytest.raises(ValueError, match=f"image_size.*{size}"):
        shapes.generate(1, size)
    with pytest.raises(ValueError, match=f"image_size.*{size}"):
        shapes.render(0, size, seed=0)


@pytest.mark.parametrize("count", [0, -3])
def test_count_below_one_is_refused(count):
    with pytest.raises(ValueError, match=f"count.*{count}"):
        shapes.generate(count)
