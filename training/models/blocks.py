"""Building blocks that more than one family builds the same way (resnet, mobilenet_v3_small)."""

from __future__ import annotations

import keras

__all__ = ["BN_MOMENTUM", "conv_bn"]

BN_MOMENTUM = 0.9  # PyTorch's default (0.1 there); Keras' 0.99 lags in few-epoch runs


def conv_bn(x, filters, kernel_size, stride, reg, name, kernel_initializer="glorot_uniform"):
    """Conv2D, same padding and no bias (the BatchNorm's offset stands in for it), then
    BatchNorm: the layers ``{name}_conv`` and ``{name}_bn``."""
    x = keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer=kernel_initializer,
        kernel_regularizer=reg,
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
