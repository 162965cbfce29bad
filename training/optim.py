"""Optimisers and learning-rate schedules by name.

Schedules are per step. ``cosine``: linear warm-up then cosine decay to zero (Loshchilov &
Hutter 2017). ``onecycle``: linear ramp from ``onecycle_start`` x peak up to the peak over the
warm-up (30% of training when none is given), then linear down to zero (Smith 2018; airbench's
triangular schedule is onecycle_start 0.2 with a 20% warm-up). ``plateau``: a constant rate that the
ReduceLROnPlateau callback halves after ``plateau_patience`` epochs without improvement.
"""

from __future__ import annotations

import keras
from keras import ops

from training.config import OptimConfig

__all__ = ["OneCycle", "build_optimizer", "build_schedule"]


@keras.saving.register_keras_serializable("sightline")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak: float, total_steps: int, warmup_steps: int, start: float = 0.0):
        self.peak, self.total_steps, self.warmup_steps = peak, total_steps, max(warmup_steps, 1)
        self.start = start

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = self.start + (1.0 - self.start) * step / self.warmup_steps
        down = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * ops.clip(ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "start": self.start}


def build_schedule(config: OptimConfig, steps_per_epoch: int, epochs: int):
    total = steps_per_epoch * epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else config.learning_rate, max(total - warmup, 1), alpha=0.0,
            warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup,
        )
    if config.schedule == "onecycle":
        return OneCycle(config.learning_rate, total, warmup or int(0.3 * total),
                        start=config.onecycle_start)
    return config.learning_rate  # constant and plateau


def build_optimizer(config: OptimConfig, steps_per_epoch: int, epochs: int):
    rate = build_schedule(config, steps_per_epoch, epochs)
    common = {"use_ema": config.ema, "ema_momentum": config.ema_momentum}
    if config.name == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=config.nesterov,
                                    **common)
    if config.name == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, **common)
    return keras.optimizers.Adam(rate, **common)
