"""resnet: the CIFAR-style ResNet v1 of He et al. 2016, "Deep Residual Learning for Image
Recognition" (https://arxiv.org/abs/1512.03385), section 4.2; optional squeeze-and-excitation
from Hu et al. 2018, "Squeeze-and-Excitation Networks" (https://arxiv.org/abs/1709.01507).

With w = config.width and d = config.depth (d=3, w=16 is ResNet-20; d=5 ResNet-32; d=9 ResNet-56):

    standardized (N, H, W, C)
    -> Conv3x3(w) -> BN -> ReLU                       (N, H, W, w)         the stem
    -> stage 1: d basic blocks, stride 1              (N, H, W, w)
    -> stage 2: d basic blocks, the first stride 2    (N, H/2, W/2, 2w)
    -> stage 3: d basic blocks, the first stride 2    (N, H/4, W/4, 4w)    last ReLU: "features"
    -> GlobalAveragePooling -> Dropout(config.dropout) -> Dense(num_classes) "logits"

Basic block: Conv3x3 -> BN -> ReLU -> Conv3x3 -> BN [-> SE] -> + shortcut -> ReLU, where the
shortcut is the identity, or a strided 1x1 conv + BN where the shape changes (the paper's
option B). The network has 6d + 2 weighted layers.
"""

from __future__ import annotations

import keras

from training.config import ModelConfig
from training.models.blocks import conv_bn

__all__ = ["build"]

SE_RATIO = 16  # the paper's reduction ratio r


def build(x, config: ModelConfig, num_classes: int):
    """Standardized images -> logits tensor (from the Dense named "logits")."""
    reg = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    x = conv_bn(x, config.width, 3, 1, reg, "stem", "he_normal")
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate((config.width, 2 * config.width, 4 * config.width), 1):
        for block in range(1, config.depth + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            last = stage == 3 and block == config.depth
            name = f"stage{stage}_block{block}"
            x = _basic_block(x, filters, stride, config.squeeze_excite, reg, name, last)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # (N, 4w)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)


def _basic_block(x, filters, stride, squeeze_excite, reg, name, last):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, stride, reg, f"{name}_shortcut", "he_normal")
    x = conv_bn(x, filters, 3, stride, reg, f"{name}_a", "he_normal")
    x = keras.layers.ReLU(name=f"{name}_a_relu")(x)
    x = conv_bn(x, filters, 3, 1, reg, f"{name}_b", "he_normal")
    if squeeze_excite:
        x = _squeeze_excite(x, reg, f"{name}_se")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name="features" if last else f"{name}_relu")(x)


def _squeeze_excite(x, reg, name):
    """Reweight channels by a gate computed from their global average: (N,h,w,C) -> same."""
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)  # (N,1,1,C)
    s = keras.layers.Dense(
        max(channels // SE_RATIO, 4),
        activation="relu",
        kernel_regularizer=reg,
        name=f"{name}_reduce",
    )(s)
    s = keras.layers.Dense(
        channels, activation="sigmoid", kernel_regularizer=reg, name=f"{name}_expand"
    )(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])
