"""Training-time augmentation on batches inside tf.data; none of it runs at evaluation.

Pixels stay raw (float32 in [0, 255]) throughout: standardisation is the model's first layer.
Labels are one-hot (or soft) so that Mixup and CutMix can blend them.

- Geometric (flip, rotation, translation, zoom): Keras preprocessing layers, per image.
- Colour (brightness, contrast, saturation, hue): per-image factors drawn here with stateless
  ops, so the ranges mean what the config says (a factor of 0.2 is [0.8, 1.2]).
- Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): whole-batch, with a partner image
  from a permutation of the batch; when both are on, each batch gets one of them at random.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from training.config import AugmentConfig

__all__ = ["build_augmenter", "color_jitter", "cutmix", "geometric_layers", "mixup"]


def geometric_layers(config: AugmentConfig, seed: int) -> list[keras.layers.Layer]:
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    fill = {"fill_mode": config.fill_mode, "interpolation": config.interpolation}
    if config.rotation > 0:  # Keras takes a fraction of a full turn
        layers.append(keras.layers.RandomRotation(config.rotation / 360.0, seed=seed + 1, **fill))
    if config.translation > 0:
        t = config.translation
        layers.append(keras.layers.RandomTranslation(t, t, seed=seed + 2, **fill))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom((-config.zoom, config.zoom), seed=seed + 3, **fill))
    return layers


def color_jitter(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """(N, H, W, 3) float32 in [0, 255] -> the same, each image with its own factors."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 4)

    def factor(i: int, spread: float) -> tf.Tensor:  # (N, 1, 1, 1) uniform in [-spread, spread]
        return tf.random.stateless_uniform([n, 1, 1, 1], seeds[i], -spread, spread)

    x = images
    if config.brightness > 0:
        x = x + factor(0, config.brightness) * 255.0
    if config.contrast > 0:
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * (1.0 + factor(1, config.contrast)) + mean
    if config.saturation > 0 or config.hue > 0:
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
        hue, sat, val = tf.unstack(hsv, axis=-1)  # each (N, H, W)
        if config.hue > 0:
            hue = tf.math.floormod(hue + factor(2, config.hue)[..., 0], 1.0)
        if config.saturation > 0:
            sat = tf.clip_by_value(sat * (1.0 + factor(3, config.saturation)[..., 0]), 0.0, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([hue, sat, val], axis=-1)) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def _beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    """One draw from Beta(alpha, alpha) as a ratio of gammas."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma([], seeds[0], alpha)
    b = tf.random.stateless_gamma([], seeds[1], alpha)
    return a / (a + b)


def _partners(n: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.argsort(tf.random.stateless_uniform([n], seed))


def mixup(images, labels, alpha: float, seed):
    """x = lam x + (1 - lam) x[perm]; the same blend for the labels, which still sum to 1."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    lam = _beta(seeds[0], alpha)
    perm = _partners(tf.shape(images)[0], seeds[1])
    images = lam * images + (1.0 - lam) * tf.gather(images, perm)
    labels = lam * labels + (1.0 - lam) * tf.gather(labels, perm)
    return images, labels


def cutmix(images, labels, alpha: float, seed):
    """Paste a box of the partner image; label weights equal the pasted area exactly."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    lam = _beta(seeds[0], alpha)
    perm = _partners(tf.shape(images)[0], seeds[1])
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    cut = tf.sqrt(1.0 - lam)  # box side as a fraction, so its area is (1 - lam) before clipping
    centre = tf.random.stateless_uniform([2], seeds[2])
    y0 = tf.cast(tf.clip_by_value((centre[0] - cut / 2) * hf, 0.0, hf), tf.int32)
    y1 = tf.cast(tf.clip_by_value((centre[0] + cut / 2) * hf, 0.0, hf), tf.int32)
    x0 = tf.cast(tf.clip_by_value((centre[1] - cut / 2) * wf, 0.0, wf), tf.int32)
    x1 = tf.cast(tf.clip_by_value((centre[1] + cut / 2) * wf, 0.0, wf), tf.int32)
    rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
    cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
    box = tf.cast(tf.logical_and(rows[:, None], cols[None, :]), images.dtype)[None, :, :, None]
    images = images * (1.0 - box) + tf.gather(images, perm) * box
    pasted = tf.reduce_sum(box) / (hf * wf)  # the area actually pasted, after clipping
    labels = (1.0 - pasted) * labels + pasted * tf.gather(labels, perm)
    return images, labels


def build_augmenter(config: AugmentConfig, seed: int):
    """A function (images, labels, seed) -> (images, labels) for ``Dataset.map`` on batches."""
    geometric = keras.Sequential(geometric_layers(config, seed), name="augment")
    colour = any(v > 0 for v in (config.brightness, config.contrast, config.saturation, config.hue))

    def augment(images, labels, step_seed):
        seeds = tf.random.experimental.stateless_split(step_seed, 3)
        if geometric.layers:
            images = geometric(images, training=True)
        if colour:
            images = color_jitter(images, config, seeds[0])
        use_mixup, use_cutmix = config.mixup_alpha > 0, config.cutmix_alpha > 0
        if use_mixup and use_cutmix:
            pick = tf.random.stateless_uniform([], seeds[1]) < 0.5
            images, labels = tf.cond(
                pick,
                lambda: mixup(images, labels, config.mixup_alpha, seeds[2]),
                lambda: cutmix(images, labels, config.cutmix_alpha, seeds[2]),
            )
        elif use_mixup:
            images, labels = mixup(images, labels, config.mixup_alpha, seeds[2])
        elif use_cutmix:
            images, labels = cutmix(images, labels, config.cutmix_alpha, seeds[2])
        return images, labels

    return augment

