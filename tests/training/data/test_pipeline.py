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
