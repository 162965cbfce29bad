"""The training pipeline: the same config gives the same batches, augmented in parallel."""

import numpy as np

from training.config import Config
from training.data.pipeline import train_pipeline


def first_batches(config: Config, images, labels, count: int = 4) -> list[np.ndarray]:
    ds = train_pipeline(images, labels, 3, config)
    return [batch.numpy() for batch, _ in ds.take(count)]


def test_two_runs_of_one_config_see_the_same_augmented_batches():
    """Every augmentation is drawn from each batch's seed, so tf.data's parallel map cannot
    change what a run sees (Keras' layers' shared seed state did)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 96)
    config = Config(batch_size=8)  # the default augmentation: every geometric and colour op
    first, second = first_batches(config, images, labels), first_batches(config, images, labels)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    config.seed = 43
    assert not np.array_equal(first_batches(config, images, labels)[0], first[0])


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs():
    """airbench's alternating flip: an image mirrored in the even epochs is not in the odd ones,
    and the other way round; which images start mirrored is a seeded draw."""
    from training.config import AugmentConfig
    from training.data.pipeline import train_steps

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(40) % 3
    off = dict(rotation=0, translation=0, zoom=0, brightness=0, contrast=0, saturation=0, hue=0)
    config = Config(batch_size=8, augment=AugmentConfig(alternate_flip=True, **off))
    steps = train_steps(len(images), config)
    assert steps == 5
    ds = train_pipeline(images, labels, 3, config).take(4 * steps)
    batches = [batch.numpy() for batch, _ in ds]
    epochs = [np.concatenate(batches[i * steps:(i + 1) * steps]) for i in range(4)]

    def mirrored(epoch):  # per original image: seen mirrored in this epoch?
        seen = {}
        for image in epoch:
            for i, original in enumerate(images):
                if np.array_equal(image, original):
                    seen[i] = False
                elif np.array_equal(image, original[:, ::-1]):
                    seen[i] = True
        assert len(seen) == len(images)  # every image once per epoch, in one orientation
        return np.array([seen[i] for i in range(len(images))])

    even, odd = mirrored(epochs[0]), mirrored(epochs[1])
    np.testing.assert_array_equal(odd, ~even)
    np.testing.assert_array_equal(mirrored(epochs[2]), even)
    np.testing.assert_array_equal(mirrored(epochs[3]), odd)
    assert 0 < even.sum() < len(images)
    assert not np.array_equal(epochs[0], epochs[2])  # still reshuffled every pass
