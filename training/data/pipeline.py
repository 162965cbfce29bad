"""``Dataset`` arrays -> tf.data pipelines: cache, shuffle, batch, augment, prefetch.

Images travel as float32 raw pixels (N, S, S, 3) in [0, 255]; labels as one-hot float32
(N, classes) so Mixup and CutMix can blend them. Augmentation runs on whole batches, in
parallel with training (``num_parallel_calls``, ``prefetch``), with per-batch seeds from
``tf.data.Dataset.random`` so a seeded run repeats.

Under ``MultiWorkerMirroredStrategy`` each worker builds the same pipeline from the same
arrays, and the strategy shards it by element (``AutoShardPolicy.DATA``): every global batch is
split between the workers, so each trains on its own part and all take the same number of
steps. The default policy (AUTO) would first look for files to shard, find an in-memory
dataset, and fall back to DATA with a warning on every run.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from training.augment import build_augmenter
from training.config import Config

__all__ = ["eval_pipeline", "train_pipeline"]

AUTOTUNE = tf.data.AUTOTUNE


def _slices(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tf.data.Dataset:
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((images, onehot)).with_options(options)


def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def train_pipeline(images, labels, num_classes: int, config: Config) -> tf.data.Dataset:
    ds = _slices(images, labels, num_classes)
    if config.data.cache:
        ds = ds.cache()
    ds = ds.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size, drop_remainder=len(labels) >= config.batch_size)
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    augment = build_augmenter(config.augment)
    seeds = tf.data.Dataset.random(seed=config.seed).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(
        lambda batch, seed: augment(batch[0], batch[1], seed), num_parallel_calls=AUTOTUNE
    )
    return ds.prefetch(AUTOTUNE)


def eval_pipeline(images, labels, num_classes: int, batch_size: int) -> tf.data.Dataset:
    ds = _slices(images, labels, num_classes).batch(batch_size)
    return ds.map(_to_float, num_parallel_calls=AUTOTUNE).cache().prefetch(AUTOTUNE)
