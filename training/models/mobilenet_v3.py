"""mobilenet_v3_small: MobileNetV3-Small of Howard et al. 2019, "Searching for MobileNetV3"
(https://arxiv.org/abs/1905.02244), Table 2, sized for small inputs.

Every channel count is scaled by alpha = config.width / 16 (width=16 is the paper's network)
and rounded to a multiple of 8. For inputs of 64 px or less the stem keeps stride 1, so a 32 px
image ends at 2x2 instead of collapsing to 1x1; larger inputs use the paper's stride 2.

    standardized (N, H, W, C)
    -> Conv3x3(16a, stride 1 or 2) -> BN -> hard-swish              (N, H/s, W/s, 16a)
    -> 11 bottlenecks (table below), 4 of them stride 2             (N, H/16s, W/16s, 96a)
    -> Conv1x1(576a) -> BN -> hard-swish "features"                 (N, h, w, 576a)
    -> GlobalAveragePooling -> Dense(1024a, hard-swish) -> Dropout(config.dropout)
    -> Dense(num_classes) "logits"

Bottleneck (inverted residual): [Conv1x1 expand -> BN -> act] -> Depthwise kxk -> BN -> act
[-> SE] -> Conv1x1 project -> BN [-> + input when the shape is unchanged]. SE here is the
paper's: squeeze to expand/4 channels, ReLU, hard-sigmoid gate. ``config.depth`` and
``config.squeeze_excite`` are ignored: the table fixes both.
"""

from __future__ import annotations

import keras

from training.config import ModelConfig
from training.models.blocks import BN_MOMENTUM, conv_bn

__all__ = ["build"]

# Table 2: kernel, expansion channels, output channels, squeeze-excite, activation, stride.
BLOCKS = (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hard_swish", 2),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 240, 40, True, "hard_swish", 1),
    (5, 120, 48, True, "hard_swish", 1),
    (5, 144, 48, True, "hard_swish", 1),
    (5, 288, 96, True, "hard_swish", 2),
    (5, 576, 96, True, "hard_swish", 1),
    (5, 576, 96, True, "hard_swish", 1),
)


def build(x, config: ModelConfig, num_classes: int):
    """Standardized images -> logits tensor (from the Dense named "logits")."""
    alpha = config.width / 16
    reg = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    stem_stride = 1 if max(x.shape[1], x.shape[2]) <= 64 else 2
    x = conv_bn(x, _divisible(16 * alpha), 3, stem_stride, reg, "stem")
    x = keras.layers.Activation("hard_swish", name="stem_act")(x)
    for i, (kernel, expand, out, se, act, stride) in enumerate(BLOCKS, 1):
        expand, out = _divisible(expand * alpha), _divisible(out * alpha)
        x = _bottleneck(x, kernel, expand, out, se, act, stride, reg, f"block{i}")
    x = conv_bn(x, _divisible(576 * alpha), 1, 1, reg, "last")
    x = keras.layers.Activation("hard_swish", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)  # (N, 576a)
    x = keras.layers.Dense(
        _divisible(1024 * alpha), activation="hard_swish", kernel_regularizer=reg, name="hidden"
    )(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)


def _bottleneck(inputs, kernel, expand, out, se, act, stride, reg, name):
    x = inputs
    if expand != inputs.shape[-1]:  # the first block has nothing to expand
        x = conv_bn(x, expand, 1, 1, reg, f"{name}_expand")
        x = keras.layers.Activation(act, name=f"{name}_expand_act")(x)
    x = keras.layers.DepthwiseConv2D(  # no L2 on depthwise kernels, as in TF-slim's MobileNets
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_depthwise"
    )(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_depthwise_bn")(x)
    x = keras.layers.Activation(act, name=f"{name}_depthwise_act")(x)
    if se:
        x = _squeeze_excite(x, reg, f"{name}_se")
    x = conv_bn(x, out, 1, 1, reg, f"{name}_project")
    if stride == 1 and inputs.shape[-1] == out:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def _squeeze_excite(x, reg, name):
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)  # (N,1,1,C)
    s = keras.layers.Conv2D(
        _divisible(channels / 4),
        1,
        activation="relu",
        kernel_regularizer=reg,
        name=f"{name}_reduce",
    )(s)
    s = keras.layers.Conv2D(
        channels, 1, activation="hard_sigmoid", kernel_regularizer=reg, name=f"{name}_expand"
    )(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])


def _divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of 8, never more than 10% down (the paper's
    reference ``_make_divisible``)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded
