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
    if config.augment.flip and config.augment.alternate_flip:
        return max(num_images // config.batch_size, 1)
    return None


def train_pipeline(images, labels, num_classes: int, config: Config) -> tf.data.Dataset:
    if config.augment.flip and config.augment.alternate_flip:
        return _alternating_flip_pipeline(images, labels, num_classes, config)
    ds = _slices(images, labels, num_classes)
    if config.data.cache:
        ds = ds.cache()
    return _shuffled_augmented(ds, len(labels), config, build_augmenter(config.augment))


def _shuffled_augmented(ds, count: int, config: Config, augment, seed_offset: int = 0):
    ds = ds.shuffle(count, seed=config.seed + seed_offset, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size, drop_remainder=count >= config.batch_size)
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    seeds = tf.data.Dataset.random(seed=config.seed + seed_offset).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda batch, seed: augment(batch[0], batch[1], seed), num_parallel_calls=AUTOTUNE
    )
    return ds.prefetch(AUTOTUNE)


def _alternating_flip_pipeline(images, labels, num_classes: int, config: Config):
    """Even passes mirror the images whose fixed draw is 1, odd passes the others; the other
    augmentations are drawn per batch as usual."""
    mirrored_on_even = np.random.default_rng(config.seed).integers(0, 2, len(labels)) == 1
    augment = build_augmenter(dataclasses.replace(config.augment, flip=False))
    passes = []
    for parity in (0, 1):
        mirror = mirrored_on_even if parity == 0 else ~mirrored_on_even
        ds = _slices(images, labels, num_classes)
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(mirror))
        ds = ds.map(_flip_if, num_parallel_calls=AUTOTUNE)
        if config.data.cache:
            ds = ds.cache()
        passes.append(_shuffled_augmented(ds, len(labels), config, augment, seed_offset=parity))
    return passes[0].concatenate(passes[1]).repeat()


def _flip_if(example, mirror):
    image, label = example
    return tf.cond(mirror, lambda: tf.reverse(image, axis=[1]), lambda: image), label


def eval_pipeline(images, labels, num_classes: int, batch_size: int) -> tf.data.Dataset:
    ds = _slices(images, labels, num_classes).batch(batch_size)
    return ds.map(_to_float, num_parallel_calls=AUTOTUNE).cache().prefetch(AUTOTUNE)
