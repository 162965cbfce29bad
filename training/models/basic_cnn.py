"""basic_cnn: the seed project's network, kept exactly, as the baseline every family must beat.

    standardized (N, H, W, C)
    -> Conv2D(32, 3, relu)                  (N, H-2, W-2, 32)      valid padding throughout
    -> MaxPool2D(2)                         (N, (H-2)/2, ..., 32)
    -> Conv2D(64, 3, relu)                  (N, h, w, 64)
    -> MaxPool2D(2) "features"              (N, h/2, w/2, 64)      the Grad-CAM feature map
    -> Flatten                              (N, h/2 * w/2 * 64)
    -> Dense(64, relu) -> Dropout(config.dropout)
    -> Dense(num_classes) "logits"

Flatten + Dense, unlike the other families' global average pool: that is what the seed did.
The Grad-CAM map is the pooled one, the last spatial map the dense head sees: TFLite has no
MaxPoolGrad builtin, so a gradient back through the pool could not run in LiteRT.
``config.width``, ``depth`` and ``squeeze_excite`` are ignored: the seed is fixed.
"""

from __future__ import annotations

import keras

from training.config import ModelConfig

__all__ = ["build"]


def build(x, config: ModelConfig, num_classes: int):
    """Standardized images -> logits tensor (from the Dense named "logits")."""
    reg = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    x = keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=reg, name="conv1")(x)
    x = keras.layers.MaxPool2D(name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", kernel_regularizer=reg, name="conv2")(x)
    x = keras.layers.MaxPool2D(name="features")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", kernel_regularizer=reg, name="dense")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return keras.layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
