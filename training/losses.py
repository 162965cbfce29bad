"""Losses by name, all on one-hot (or Mixup-soft) labels.

- ``crossentropy``: categorical cross-entropy with optional label smoothing.
- ``weighted_crossentropy``: each example weighted by its class's inverse frequency in the
  training split (normalised to mean 1), for imbalanced data.
- ``focal``: focal loss (Lin et al. 2017), FL = -alpha (1 - p_t)^gamma log p_t, which
  down-weights easy examples.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from training.config import LossConfig

__all__ = ["build_loss", "class_weights"]


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over the classes present."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    return (weights / weights[counts > 0].mean()).astype(np.float32)


@keras.saving.register_keras_serializable("sightline")
class WeightedCrossentropy(keras.losses.Loss):
    def __init__(self, weights, label_smoothing: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.weights = [float(w) for w in weights]
        self.label_smoothing = label_smoothing
        self._ce = keras.losses.CategoricalCrossentropy(
            label_smoothing=label_smoothing, reduction=None
        )

    def call(self, y_true, y_pred):
        per_example = ops.sum(y_true * ops.convert_to_tensor(self.weights), axis=-1)
        return self._ce(y_true, y_pred) * per_example

    def get_config(self):
        return {**super().get_config(), "weights": self.weights,
                "label_smoothing": self.label_smoothing}


def build_loss(config: LossConfig, train_labels: np.ndarray, num_classes: int):
    if config.name == "crossentropy":
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    if config.name == "weighted_crossentropy":
        return WeightedCrossentropy(class_weights(train_labels, num_classes),
                                    label_smoothing=config.label_smoothing)
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=config.focal_alpha, gamma=config.focal_gamma, label_smoothing=config.label_smoothing
    )
