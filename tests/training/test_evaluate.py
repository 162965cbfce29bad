"""Test-time augmentation views: what each one shows and how much it counts."""

import numpy as np
import pytest

from training.evaluate import predict, tta_views


def _images(n=2, size=5):
    return np.arange(n * size * size * 3, dtype=np.float32).reshape(n, size, size, 3)


@pytest.mark.parametrize("flip, translate, count", [(False, False, 1), (True, False, 2),
                                                     (False, True, 3), (True, True, 6)])
def test_weights_sum_to_one_over_the_views(flip, translate, count):
    views = tta_views(_images(), flip, translate)
    assert len(views) == count
    assert sum(weight for weight, _ in views) == pytest.approx(1.0)
    assert all(view.shape == _images().shape for _, view in views)


def test_translated_views_move_one_pixel_each_way_with_reflected_borders():
    images = _images()
    (_, plain), (up_left_w, up_left), (_, down_right) = tta_views(images, False, True)
    assert up_left_w == 0.25
    np.testing.assert_array_equal(plain, images)
    np.testing.assert_array_equal(up_left[:, 1:, 1:], images[:, :-1, :-1])  # content moves +1
    np.testing.assert_array_equal(up_left[:, 0, 1:], images[:, 1, :-1])  # reflect, not edge
    np.testing.assert_array_equal(down_right[:, :-1, :-1], images[:, 1:, 1:])


def test_flip_pairs_each_view_with_its_mirror():
    views = tta_views(_images(), True, True)
    for (_, view), (_, mirror) in zip(views[::2], views[1::2], strict=True):
        np.testing.assert_array_equal(mirror, view[:, :, ::-1])


class _Probe:
    """A 'model' whose probability for class 0 is an image's top-left pixel, so the average is
    known exactly."""

    def predict(self, x, batch_size, verbose):
        first = x[:, 0, 0, 0] / 1000.0
        return np.stack([first, 1.0 - first], axis=1)


def test_predict_averages_the_views_with_their_weights():
    images = _images(1, 4)
    expected = sum(weight * view[:, 0, 0, 0] / 1000.0
                   for weight, view in tta_views(images, True, True))
    got = predict(_Probe(), images, batch_size=8, tta_flip=True, tta_translate=True)
    assert got[0, 0] == pytest.approx(expected[0]) and got.sum() == pytest.approx(1.0)
    assert got[0, 0] != pytest.approx(images[0, 0, 0, 0] / 1000.0)  # the views did change it
