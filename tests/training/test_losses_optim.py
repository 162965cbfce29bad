import keras
import numpy as np
import pytest

from training.config import LossConfig, OptimConfig
from training.losses import build_loss, class_weights
from training.optim import OneCycle, build_optimizer, build_schedule

Y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]], np.float32)


def test_class_weights_are_inverse_frequency_with_mean_one():
    weights = class_weights(np.array([0] * 90 + [1] * 10), 2)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert weights.mean() == pytest.approx(1.0)


def test_crossentropy_matches_the_formula_and_label_smoothing_raises_it():
    plain = float(build_loss(LossConfig(), np.array([0, 1]), 3)(Y, P))
    expected = -np.mean(np.log([0.7, 0.8, 0.4, 0.2]))
    assert plain == pytest.approx(expected, rel=1e-5)
    smooth = float(build_loss(LossConfig(label_smoothing=0.2), np.array([0, 1]), 3)(Y, P))
    assert smooth != pytest.approx(plain)


def test_weighted_crossentropy_weights_rare_classes_up():
    labels = np.array([0] * 8 + [1] * 1 + [2] * 1)
    loss = build_loss(LossConfig(name="weighted_crossentropy"), labels, 3)
    rare = float(loss(Y[1:2], P[1:2]))
    common = float(loss(Y[0:1], np.array([[0.8, 0.1, 0.1]], np.float32)))
    # same probability on the true class (0.8), the rare class costs more
    assert rare > 4 * common


def test_focal_loss_down_weights_easy_examples():
    focal = build_loss(LossConfig(name="focal", focal_gamma=2.0), np.array([0]), 3)
    ce = build_loss(LossConfig(), np.array([0]), 3)
    easy = np.array([[0.95, 0.03, 0.02]], np.float32)
    hard = np.array([[0.2, 0.5, 0.3]], np.float32)
    ratio_easy = float(focal(Y[:1], easy)) / float(ce(Y[:1], easy))
    ratio_hard = float(focal(Y[:1], hard)) / float(ce(Y[:1], hard))
    assert ratio_easy < ratio_hard / 10


def test_cosine_with_warmup_ramps_then_decays_to_zero():
    schedule = build_schedule(OptimConfig(schedule="cosine", learning_rate=0.1,
                                          warmup_epochs=1), steps_per_epoch=10, epochs=5)
    rates = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert rates[0] == pytest.approx(0.0)
    assert rates[1] == pytest.approx(0.05, rel=1e-3)
    assert rates[2] == pytest.approx(0.1, rel=1e-3)
    assert 0 < rates[3] < 0.1 and rates[4] == pytest.approx(0.0, abs=1e-6)


def test_one_cycle_peaks_at_warmup_end():
    schedule = OneCycle(peak=1.0, total_steps=100, warmup_steps=30)
    assert float(schedule(0)) == 0.0
    assert float(schedule(30)) == pytest.approx(1.0)
    assert float(schedule(65)) == pytest.approx(0.5)
    assert float(schedule(100)) == pytest.approx(0.0)
    triangular = OneCycle(peak=1.0, total_steps=100, warmup_steps=20, start=0.2)
    assert float(triangular(0)) == pytest.approx(0.2)
    assert float(triangular(10)) == pytest.approx(0.6)


@pytest.mark.parametrize("name, cls", [("adam", keras.optimizers.Adam),
                                       ("sgd", keras.optimizers.SGD),
                                       ("adamw", keras.optimizers.AdamW)])
def test_optimizers_by_name(name, cls):
    optimizer = build_optimizer(OptimConfig(name=name), steps_per_epoch=10, epochs=2)
    assert isinstance(optimizer, cls)
    if name == "sgd":
        assert optimizer.nesterov and optimizer.momentum == 0.9
