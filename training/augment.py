"""Training-time augmentation on batches inside tf.data; none of it runs at evaluation.

Pixels stay raw (float32 in [0, 255]) throughout: standardisation is the model's first layer.
Labels are one-hot (or soft) so that Mixup and CutMix can blend them.

- Geometric (flip, translation, rotation, zoom): per image, stateless from the batch's seed, so
  a run's augmentation is the same every time. Translation shifts by whole pixels, as
  airbench's random crop does; rotation and zoom are one affine resampling. Keras' preprocessing
  layers were used before: each draws from a SeedGenerator, state that tf.data's parallel map
  calls raced on, which gave two consecutive batches identical flips and shifts.
- Colour (brightness, contrast, saturation, hue): per-image factors drawn here with stateless
  ops, so the ranges mean what the config says (a factor of 0.2 is [0.8, 1.2]).
- Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): whole-batch, with a partner image
  from a permutation of the batch; when both are on, each batch gets one of them at random.
"""

from __future__ import annotations

import math

import tensorflow as tf

from training.config import AugmentConfig

__all__ = ["build_augmenter", "color_jitter", "cutmix", "flip_and_shift", "mixup",
           "rotate_and_zoom"]


def rotate_and_zoom(images: tf.Tensor, rotation: float, zoom: float, fill_mode: str,
                    interpolation: str, seed: tf.Tensor) -> tf.Tensor:
    """(N, H, W, C) -> the same, each image turned about its centre by an angle uniform in
    [-rotation, +rotation] degrees and scaled by 1 / s, s uniform in [1 - zoom, 1 + zoom]
    (s > 1 shows more of the image: it zooms out), in one resampling, as Keras' RandomRotation
    and RandomZoom do."""
    n, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    limit = rotation * math.pi / 180.0
    angle = tf.random.stateless_uniform([n], seeds[0], -limit, limit)
    scale = 1.0 + tf.random.stateless_uniform([n], seeds[1], -zoom, zoom)
    cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
    cx, cy = (tf.cast(w, tf.float32) - 1) / 2, (tf.cast(h, tf.float32) - 1) / 2
    # output (x, y) reads input (cos x - sin y + a, sin x + cos y + b): about the centre
    transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy,
                           tf.zeros_like(cos), tf.zeros_like(cos)], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.stack([h, w]),
        fill_value=0.0, interpolation=interpolation.upper(), fill_mode=fill_mode.upper())


def _sources(targets: tf.Tensor, size: tf.Tensor, fill_mode: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Where each output row (or column) reads from, per Keras' fill modes for a shift smaller
    than the side: -> (indices in [0, size), which of them are inside the image)."""
    inside = (targets >= 0) & (targets < size)
    if fill_mode == "reflect":  # d c b a | a b c d | d c b a
        targets = tf.where(targets < 0, -targets - 1,
                           tf.where(targets >= size, 2 * size - targets - 1, targets))
    elif fill_mode == "wrap":
        targets = tf.math.floormod(targets, size)
    return tf.clip_by_value(targets, 0, size - 1), inside  # nearest; constant masks outside


def flip_and_shift(images: tf.Tensor, flip: bool, translation: float, fill_mode: str,
                   seed: tf.Tensor) -> tf.Tensor:
    """(N, H, W, C) -> the same, each image mirrored with probability 1/2 (``flip``) and shifted
    by whole pixels, uniform in [-round(translation * side), +round(...)] on each axis."""
    n, h, w = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if flip:  # each image of the batch on its own draw
        images = tf.image.stateless_random_flip_left_right(images, seeds[0])
    if translation <= 0:
        return images
    masks = []
    for axis, side, axis_seed in ((1, h, seeds[1]), (2, w, seeds[2])):
        reach = tf.cast(tf.round(translation * tf.cast(side, tf.float32)), tf.int32)
        shift = tf.random.stateless_uniform([n, 1], axis_seed, -reach, reach + 1, tf.int32)
        sources, inside = _sources(tf.range(side)[None, :] - shift, side, fill_mode)
        images = tf.gather(images, sources, axis=axis, batch_dims=1)
        masks.append(tf.cast(inside, images.dtype))
    if fill_mode == "constant":  # Keras' fill value, 0
        images = images * masks[0][:, :, None, None] * masks[1][:, None, :, None]
    return images


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


def build_augmenter(config: AugmentConfig):
    """A function (images, labels, seed) -> (images, labels) for ``Dataset.map`` on batches;
    each batch's own seed decides all of its draws."""
    colour = any(v > 0 for v in (config.brightness, config.contrast, config.saturation, config.hue))

    def augment(images, labels, step_seed):
        seeds = tf.random.experimental.stateless_split(step_seed, 5)
        if config.flip or config.translation > 0:
            images = flip_and_shift(images, config.flip, config.translation, config.fill_mode,
                                    seeds[3])
        if config.rotation > 0 or config.zoom > 0:
            images = rotate_and_zoom(images, config.rotation, config.zoom, config.fill_mode,
                                     config.interpolation, seeds[4])
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

