"""airbench: the fast CIFAR-10 network of Keller Jordan's airbench94, "94% on CIFAR-10 in 3.29
seconds on a single GPU" (https://arxiv.org/abs/2404.00498,
https://github.com/KellerJordan/cifar10-airbench).

With w = config.width (w=64 gives airbench94's 64/256/256) on a 32 px input:

    standardized (N, 32, 32, C)
    -> Conv2x2 "whiten", valid, frozen, 2*C*4 filters -> GELU    (N, 31, 31, 24)
    -> block(w):  Conv3x3 -> MaxPool2 -> BN -> GELU -> Conv3x3 -> BN -> GELU   (N, 15, 15, w)
    -> block(4w)                                                               (N, 7, 7, 4w)
    -> block(4w), last GELU "features"                                         (N, 3, 3, 4w)
    -> GlobalAveragePooling (or GlobalMaxPooling, config.pool) -> Rescaling(config.logit_scale,
       1/9) -> Dense(num_classes, no bias) "logits"

The whitening conv is set from the data by ``initialize_from_data`` (the eigenvectors of the
2x2 patch covariance, each scaled by 1/sqrt(eigenvalue + 5e-4), with their negations) and is
never trained. 3x3 convs have no bias and a Dirac (identity) start on their first in-channels
filters. BatchNorm: no trained scale, Keras momentum 0.9 (airbench94's 0.6 in PyTorch terms
made the running statistics follow single batches of 64), epsilon 1e-12. With
``config.bias_lr_scale`` s != 1 (airbench's 64) each BatchNorm bias is a ``ScaledBias``: a
variable v used as sqrt(s) * v, so plain SGD moves the bias s times as fast as the other
weights, while the L2 penalty on v decays it as much as theirs, which is what airbench's own
parameter groups do (lr x 64, weight decay / 64). Keras has no per-variable learning rate.
Differences from airbench94: the pool is a global average unless ``config.pool`` is max (its
MaxPool2d(3) on the 3x3 map; Grad-CAM then takes an in-graph gradient, training/cam_export.py),
and the whitening conv has no bias unless ``config.whiten_bias_epochs`` (airbench's 3) says how
many epochs its bias trains before it is frozen (``FreezableBias``).
``config.init`` picks the weight start: Keras' Glorot uniform, or PyTorch's uniform 1/sqrt(fan_in)
(the same accuracy at 10 epochs, docs/benchmarks.md). ``config.depth``, ``squeeze_excite`` and
``dropout`` are ignored: airbench has none of them.
"""

from __future__ import annotations

import keras
import numpy as np

from training.config import ModelConfig

__all__ = ["WHITEN_BIAS_LAYER", "WHITEN_LAYER", "FreezableBias", "ScaledBias", "build",
           "initialize_from_data"]

WHITEN_LAYER = "whiten"
WHITEN_BIAS_LAYER = "whiten_bias"
WHITEN_EPS = 5e-4  # airbench's eps in init_whitening_conv
MAX_IMAGES = 5000  # airbench whitens from 5,000 training images
MAX_PATCHES = 5_000_000  # bounds the work for large images: 5,000 CIFAR images give 4.8M
CHUNK_PATCHES = 500_000  # patches per covariance update: about 50 MB at a time
BN_MOMENTUM = 0.9  # Keras' (PyTorch 0.1, airbench's ablations); 94's 0.4 is noisy at small batch
BN_EPSILON = 1e-12
# Weight starts (config.init). PyTorch's default for Conv2d and Linear is uniform in
# +-1/sqrt(fan_in): 1/sqrt(3) of Glorot's bound for a square 3x3 conv, 0.42 of it for the head.
# Behind BatchNorm a larger start is a smaller effective step until weight decay shrinks it.
INITIALIZERS = {
    "glorot": keras.initializers.GlorotUniform,
    "torch": lambda: keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"),
}


def build(x, config: ModelConfig, num_classes: int):
    """Standardized images -> logits tensor (from the Dense named "logits")."""
    reg = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    init = INITIALIZERS[config.init]
    channels = x.shape[-1]
    whiten_filters = 2 * (2 * 2 * channels)  # each 2x2 patch direction, with both signs
    x = keras.layers.Conv2D(
        whiten_filters, 2, padding="valid", use_bias=False, trainable=False, name=WHITEN_LAYER
    )(x)
    if config.whiten_bias_epochs > 0:
        x = FreezableBias(config.l2, name=WHITEN_BIAS_LAYER)(x)
    x = keras.layers.Activation("gelu", name="whiten_gelu")(x)
    widths = (config.width, 4 * config.width, 4 * config.width)
    for i, width in enumerate(widths, 1):
        x = _conv(x, width, reg, init, f"block{i}_conv1")
        x = keras.layers.MaxPool2D(name=f"block{i}_pool")(x)
        x = _batch_norm(x, config, reg, f"block{i}_bn1")
        x = keras.layers.Activation("gelu", name=f"block{i}_gelu1")(x)
        x = _conv(x, width, reg, init, f"block{i}_conv2")
        x = _batch_norm(x, config, reg, f"block{i}_bn2")
        x = keras.layers.Activation("gelu", name="features" if i == 3 else f"block{i}_gelu2")(x)
    pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}
    x = pool[config.pool](name="pool")(x)  # (N, 4w)
    x = keras.layers.Rescaling(config.logit_scale, name="logit_scale")(x)
    return keras.layers.Dense(num_classes, use_bias=False, kernel_initializer=init(),
                              kernel_regularizer=reg, name="logits")(x)


def _conv(x, filters, reg, init, name):
    """Conv3x3, same padding, no bias, with airbench's Dirac start (torch.nn.init.dirac_ on the
    first in-channels filters: filter i passes input channel i through; the rest keep the
    default random start)."""
    layer = keras.layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=init(),
        kernel_regularizer=reg, name=name,
    )
    x = layer(x)
    kernel = keras.ops.convert_to_numpy(layer.kernel).copy()  # (3, 3, in, out)
    identity = min(kernel.shape[2], filters)
    kernel[:, :, :, :identity] = 0.0
    kernel[1, 1, np.arange(identity), np.arange(identity)] = 1.0
    layer.kernel.assign(kernel)
    return x


def _batch_norm(x, config: ModelConfig, reg, name):
    separate_bias = config.bias_lr_scale != 1.0
    x = keras.layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False, center=not separate_bias,
        name=name,
    )(x)
    if separate_bias:
        x = ScaledBias(config.bias_lr_scale, regularizer=reg, name=f"{name}_bias")(x)
    return x


@keras.saving.register_keras_serializable("sightline")
class ScaledBias(keras.layers.Layer):
    """x + sqrt(lr_scale) * v per channel: the gradient step on v, scaled back, moves the bias
    lr_scale times as far as a plain bias would move."""

    def __init__(self, lr_scale: float, regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.lr_scale = lr_scale
        self.regularizer = keras.regularizers.get(regularizer)

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros",
                                    regularizer=self.regularizer, name="bias")

    def call(self, x):
        return x + keras.ops.cast(self.bias * self.lr_scale**0.5, x.dtype)

    def get_config(self):
        return {**super().get_config(), "lr_scale": self.lr_scale,
                "regularizer": keras.regularizers.serialize(self.regularizer)}


@keras.saving.register_keras_serializable("sightline")
class FreezableBias(keras.layers.Layer):
    """x + b per channel, with b learning (and decayed by an L2 penalty ``l2``) until ``freeze``:
    airbench trains the whitening conv's bias for its first epochs only. The freeze is a
    non-trainable 0/1 gate on the gradient, so a compiled training step need not be rebuilt."""

    def __init__(self, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.l2 = l2

    def build(self, input_shape):
        self.learning = self.add_weight(shape=(), initializer="ones", trainable=False,
                                        name="learning")
        penalty = None
        if self.l2 > 0:  # gated too, so a frozen bias is not decayed

            def penalty(bias):
                return self.learning * self.l2 * keras.ops.sum(keras.ops.square(bias))

        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros",
                                    regularizer=penalty, name="bias")

    def call(self, x):
        gate = self.learning
        bias = gate * self.bias + (1.0 - gate) * keras.ops.stop_gradient(self.bias)
        return x + keras.ops.cast(bias, x.dtype)

    def freeze(self) -> None:
        self.learning.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def initialize_from_data(model: keras.Model, images: np.ndarray) -> None:
    """Set the frozen whitening conv from raw [0, 255] training images (airbench's
    ``init_whitening_conv``): an uncentred covariance of every standardized kh x kw patch,
    its eigenvectors in falling eigenvalue order scaled by 1/sqrt(eigenvalue + 5e-4), and
    their negations, so that GELU sees both signs of each whitened direction."""
    whiten = model.get_layer(WHITEN_LAYER)
    kh, kw, channels, _ = whiten.kernel.shape
    patches_per_image = (images.shape[1] - kh + 1) * (images.shape[2] - kw + 1)
    count = min(len(images), MAX_IMAGES, max(1, MAX_PATCHES // patches_per_image))
    # Evenly spaced, not the first `count`: a folder dataset may be sorted by class.
    chosen = np.linspace(0, len(images) - 1, count).round().astype(int)
    chunk = max(1, CHUNK_PATCHES // patches_per_image)
    covariance = np.zeros((kh * kw * channels,) * 2)
    for start in range(0, count, chunk):
        batch = np.asarray(images[chosen[start : start + chunk]], dtype="float32")
        batch = keras.ops.convert_to_numpy(model.get_layer("standardize")(batch))
        # (n, h', w', C, kh, kw) -> (n * h' * w', kh * kw * C), the order of a Keras kernel
        patches = np.lib.stride_tricks.sliding_window_view(batch, (kh, kw), axis=(1, 2))
        patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * channels)
        patches = patches.astype("float64")  # a sum over millions of patches
        covariance += patches.T @ patches
    # eigh returns eigenvalues in rising order; airbench takes the largest first
    eigenvalues, eigenvectors = np.linalg.eigh(covariance / (count * patches_per_image))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    scaled = (eigenvectors / np.sqrt(eigenvalues + WHITEN_EPS)).reshape(kh, kw, channels, -1)
    whiten.kernel.assign(np.concatenate([scaled, -scaled], axis=-1).astype("float32"))
