"""``Dataset`` arrays -> tf.data pipelines: cache, shuffle, batch, augment, prefetch.

Images travel as float32 raw pixels (N, S, S, 3) in [0, 255]; labels as one-hot float32
(N, classes) so Mixup and CutMix can blend them. Augmentation runs on whole batches, in
parallel with training (``num_parallel_calls``, ``prefetch``), with per-batch seeds from
``tf.data.Dataset.random`` so a seeded run repeats.

With ``augment.alternate_flip`` (airbench's) the mirror is not drawn per batch: each image gets
one random orientation for the even epochs and the other for the odd ones, so every two epochs
it is seen both ways. The pipeline is then endless, two shuffled passes after another, and
``fit`` takes ``steps_per_epoch`` steps of it per epoch (``train_steps``).

Under ``MultiWorkerMirroredStrategy`` each worker builds the same pipeline from the same
arrays, and the strategy shards it by element (``AutoShardPolicy.DATA``): every global batch is
split between the workers, so each trains on its own part and all take the same number of
steps. The default policy (AUTO) would first look for files to shard, find an in-memory
dataset, and fall back to DATA with a warning on every run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from training.augment import build_augmenter
from training.config import Config

__all__ = ["eval_pipeline", "train_pipeline", "train_steps"]

AUTOTUNE = tf.data.AUTOTUNE


def _slices(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tf.data.Dataset:
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((images, onehot)).with_options(options)


def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def train_steps(num_images: int, config: Config) -> int | None:
    """Steps per epoch for ``fit``, when the pipeline does not end with each epoch."""
    return max(num_images // config.batch_size, 1) if _alternates(config) else None


def train_pipeline(images, labels, num_classes: int, config: Config) -> tf.data.Dataset:
    ds = _slices(images, labels, num_classes)
    if not _alternates(config):
        if config.data.cache:
            ds = ds.cache()
        return _shuffled_augmented(ds, len(labels), config, build_augmenter(config.augment))
    # Even passes mirror the images whose fixed draw is 1, odd passes the others; the flip is
    # one batched op, and both passes read one cache.
    mirrored_on_even = np.random.default_rng(config.seed).integers(0, 2, len(labels)) == 1
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(mirrored_on_even))
    if config.data.cache:
        ds = ds.cache()
    augment = build_augmenter(dataclasses.replace(config.augment, flip=False))
    even, odd = (_shuffled_augmented(ds, len(labels), config, augment, seed_offset=parity,
                                     before=_flip_for_pass(odd=bool(parity)))
                 for parity in (0, 1))
    return even.concatenate(odd).repeat()


def _flip_for_pass(odd: bool):
    def flip(example, mirrored_on_even):
        images, labels = example
        return _mirror_where(images, mirrored_on_even != odd), labels

    return flip


def _alternates(config: Config) -> bool:
    return config.augment.flip and config.augment.alternate_flip


def _mirror_where(images, mirror):
    """(N, H, W, C) batch -> the same, with the images where ``mirror`` (N,) is true mirrored."""
    return tf.where(mirror[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _shuffled_augmented(ds, count: int, config: Config, augment, seed_offset: int = 0,
                        before=None):
    """Shuffle, batch, ``before`` on each batch (if given), float pixels, augment, prefetch."""
    ds = ds.shuffle(count, seed=config.seed + seed_offset, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size, drop_remainder=count >= config.batch_size)
    if before is not None:
        ds = ds.map(before, num_parallel_calls=AUTOTUNE)
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=config.seed + seed_offset).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda batch, seed: augment(batch[0], batch[1], seed), num_parallel_calls=AUTOTUNE
    )
    return ds.prefetch(AUTOTUNE)


def eval_pipeline(images, labels, num_classes: int, batch_size: int) -> tf.data.Dataset:
    ds = _slices(images, labels, num_classes).batch(batch_size)
    return ds.map(_to_float, num_parallel_calls=AUTOTUNE).cache().prefetch(AUTOTUNE)
