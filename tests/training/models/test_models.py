"""The model registry's contract, checked on every family at a tiny size."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import keras
import numpy as np
import pytest

from serving.card import GAP_HEAD, GRADIENT_HEAD
from training.cam_export import affine_head, head_kind
from training.config import ModelConfig
from training.errors import UserError
from training.models import (
    FEATURE_LAYER,
    LOGITS_LAYER,
    MODELS,
    OUTPUT_LAYER,
    build_model,
    initialize_from_data,
)

SHAPE = (32, 32, 3)
CLASSES = 5
MEAN = (120.0, 110.0, 100.0)
STD = (60.0, 50.0, 40.0)
TINY = {  # small enough that a build and a forward pass take well under a second
    "basic_cnn": ModelConfig(name="basic_cnn"),
    "resnet": ModelConfig(name="resnet", width=4, depth=1),
    "mobilenet_v3_small": ModelConfig(name="mobilenet_v3_small", width=8),
    "airbench": ModelConfig(name="airbench", width=8),
}


def _build(config: ModelConfig, input_shape=SHAPE) -> keras.Model:
    return build_model(config, input_shape=input_shape, num_classes=CLASSES, mean=MEAN, std=STD)


def _pixels(n: int, seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


@pytest.fixture(scope="module", params=sorted(TINY))
def model(request) -> keras.Model:
    return _build(TINY[request.param])


@pytest.fixture
def mixed_bfloat16():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_registry_names():
    assert set(MODELS) == set(TINY)


def test_output_is_a_float32_distribution(model):
    probabilities = model(_pixels(3), training=False)
    assert probabilities.shape == (3, CLASSES)
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.sum(probabilities, 1)), 1, rtol=1e-5
    )


def test_named_layers_exist(model):
    assert model.input.name == "image"
    assert model.layers[1].name == "standardize"
    assert len(model.get_layer(FEATURE_LAYER).output.shape) == 4  # (N, h, w, C)
    assert model.get_layer(LOGITS_LAYER).output.shape == (None, CLASSES)
    assert model.get_layer(LOGITS_LAYER).get_config()["activation"] == "linear"
    assert model.layers[-1].name == OUTPUT_LAYER


def test_standardization_is_baked_in(model):
    standardize = model.get_layer("standardize")
    at_mean = np.broadcast_to(np.array(MEAN, "float32"), (1, *SHAPE))
    one_std_up = at_mean + np.array(STD, "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(standardize(at_mean)), 0, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(standardize(one_std_up)), 1, rtol=1e-6)


# The card's head per family. mobilenet_v3 pools, but its hard-swish Dense makes the gradient
# vary with the input: the old rule ("any global pool is gap") got it wrong.
HEADS = {"airbench": GAP_HEAD, "resnet": GAP_HEAD, "basic_cnn": GRADIENT_HEAD,
         "mobilenet_v3_small": GRADIENT_HEAD}


@pytest.mark.parametrize("name", sorted(TINY))
def test_the_head_kind_is_the_one_the_export_uses(name):
    model = _build(TINY[name])
    assert head_kind(model) == HEADS[name]
    assert (affine_head(model) is not None) == (HEADS[name] == GAP_HEAD)


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match="unknown model 'vgg'; known: basic_cnn"):
        _build(ModelConfig(name="vgg"))


def test_squeeze_excite_adds_parameters():
    plain = _build(TINY["resnet"])
    with_se = _build(dataclasses.replace(TINY["resnet"], squeeze_excite=True))
    assert with_se.count_params() > plain.count_params()


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_sets_residual_blocks_per_stage(depth):
    resnet = _build(dataclasses.replace(TINY["resnet"], depth=depth))
    adds = [layer for layer in resnet.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 3 * depth


def test_airbench_whitening_is_set_from_data_and_frozen():
    airbench = _build(TINY["airbench"])
    whiten = airbench.get_layer("whiten")
    before = keras.ops.convert_to_numpy(whiten.kernel).copy()
    rng = np.random.default_rng(1)  # correlated channels, as in natural images
    images = np.clip(
        rng.normal(128, 30, (64, 32, 32, 1)) + rng.normal(0, 10, (64, 32, 32, 3)), 0, 255
    ).astype("float32")
    initialize_from_data(airbench, images)
    after = keras.ops.convert_to_numpy(whiten.kernel)
    assert after.shape == (2, 2, 3, 24) and not np.allclose(before, after)
    np.testing.assert_allclose(after[..., 12:], -after[..., :12])
    assert not whiten.trainable
    assert all(weight is not whiten.kernel for weight in airbench.trainable_weights)
    # The whitened patches' second moment is diag(lambda / (lambda + eps)): nearly identity.
    standardized = airbench.get_layer("standardize")(images)
    whitened = keras.ops.convert_to_numpy(whiten(standardized))[..., :12].reshape(-1, 12)
    moment = whitened.T @ whitened / len(whitened)
    np.testing.assert_allclose(moment, np.diag(np.diag(moment)), atol=1e-3)
    assert np.all((np.diag(moment) > 0.5) & (np.diag(moment) <= 1.0 + 1e-3))


def test_initialize_from_data_is_a_no_op_without_a_hook():
    basic = _build(TINY["basic_cnn"])
    before = [w.copy() for w in basic.get_weights()]
    initialize_from_data(basic, _pixels(4))
    assert all(np.array_equal(a, b) for a, b in zip(before, basic.get_weights(), strict=True))


def test_a_training_step_reduces_the_loss():
    keras.utils.set_random_seed(0)
    basic = _build(TINY["basic_cnn"])
    basic.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    images, labels = _pixels(16), np.arange(16) % CLASSES
    loss_before = basic.evaluate(images, labels, verbose=0)
    for _ in range(3):
        basic.train_on_batch(images, labels)
    assert basic.evaluate(images, labels, verbose=0) < loss_before


@pytest.mark.parametrize("name", sorted(TINY))
def test_mixed_bfloat16_keeps_float32_probabilities(name, mixed_bfloat16):
    mixed = _build(TINY[name])
    assert mixed.get_layer(FEATURE_LAYER).compute_dtype == "bfloat16"
    assert mixed(_pixels(2), training=False).dtype == "float32"


def test_airbench_max_pool_head_takes_the_gradient_path():
    """A max-pool head's gradient depends on the input: no constant W_eff, so cam_inputs must
    be the in-graph gradient (checked against GradientTape in test_quantize)."""
    model = _build(dataclasses.replace(TINY["airbench"], pool="max"))
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalMaxPooling2D)
    assert head_kind(model) == GRADIENT_HEAD and affine_head(model) is None


def test_scaled_bias_moves_lr_scale_times_as_far_as_a_plain_bias():
    """One SGD step on the same upstream gradient: a ScaledBias(64) moves its effective bias 64
    times as far as a plain bias would (airbench's 64x rate for BatchNorm biases)."""
    from training.models.airbench import ScaledBias

    layer = ScaledBias(64.0)
    x = np.zeros((4, 3), "float32")
    layer.build(x.shape)
    upstream = np.array([0.5, -1.0, 2.0], "float32")
    rate = 0.01
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.ops.sum(layer(x) * upstream)
    (grad,) = tape.gradient(loss, [layer.bias])
    keras.optimizers.SGD(rate).apply([grad], [layer.bias])
    effective = keras.ops.convert_to_numpy(layer(x))[0]
    plain_step = -rate * 4 * upstream  # a plain bias: d loss / d b = 4 * upstream (4 rows)
    np.testing.assert_allclose(effective, 64 * plain_step, rtol=1e-5)


def test_airbench_bias_lr_scale_replaces_batchnorm_centres_and_is_decayed():
    model = _build(dataclasses.replace(TINY["airbench"], bias_lr_scale=64.0, l2=1e-3))
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.center for layer in norms)
    biases = [layer.name for layer in model.layers if layer.name.endswith("_bias")]
    assert biases == [f"{layer.name}_bias" for layer in norms]
    plain = _build(dataclasses.replace(TINY["airbench"], l2=1e-3))
    assert len(model.losses) == len(plain.losses) + len(norms)  # an L2 term per bias


def test_airbench_with_scaled_biases_survives_a_save_and_load(tmp_path):
    model = _build(dataclasses.replace(TINY["airbench"], bias_lr_scale=64.0))
    bias = model.get_layer("block1_bn1_bias").bias
    bias.assign(np.linspace(-1, 1, bias.shape[0]).astype("float32"))
    model.save(tmp_path / "model.keras")
    images = _pixels(2)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", keras.ops.convert_to_numpy(model(images)))
    # a fresh process, which has imported no model family, as `training evaluate` is
    script = ("import sys, numpy as np; from training.models import load_model; "
              "d = sys.argv[1]; m = load_model(d + '/model.keras'); "
              "np.testing.assert_allclose(np.asarray(m(np.load(d + '/images.npy'))), "
              "np.load(d + '/expected.npy'), rtol=1e-5, atol=1e-6)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_freezable_bias_learns_until_frozen_and_then_keeps_its_value():
    """airbench's whitening bias: trained (and decayed) for its first epochs, then fixed. After
    ``freeze`` neither the loss nor the L2 penalty moves it, and the forward pass is unchanged."""
    import tensorflow as tf

    from training.models.airbench import FreezableBias

    layer = FreezableBias(l2=0.1)
    x = np.zeros((4, 3), "float32")
    layer.build(x.shape)
    layer.bias.assign([0.5, -1.0, 2.0])
    upstream = np.array([1.0, 1.0, 1.0], "float32")

    def gradient():
        with tf.GradientTape() as tape:
            loss = keras.ops.sum(layer(x) * upstream) + sum(layer.losses)
        return keras.ops.convert_to_numpy(tape.gradient(loss, layer.bias))

    np.testing.assert_allclose(gradient(), 4 * upstream + 2 * 0.1 * np.array([0.5, -1.0, 2.0]),
                               rtol=1e-5)
    before = keras.ops.convert_to_numpy(layer(x))
    layer.freeze()
    np.testing.assert_array_equal(gradient(), 0.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), before)
    assert layer.bias.trainable and not layer.learning.trainable


def test_airbench_whitening_bias_freezes_after_its_epochs_and_survives_a_save(tmp_path):
    from training.train import _FreezeWhitenBias

    model = _build(dataclasses.replace(TINY["airbench"], whiten_bias_epochs=2))
    layer = model.get_layer("whiten_bias")
    callback = _FreezeWhitenBias(2)
    callback.set_model(model)
    callback.on_epoch_end(0)
    assert float(layer.learning.numpy()) == 1.0
    callback.on_epoch_end(1)
    assert float(layer.learning.numpy()) == 0.0
    layer.bias.assign(np.linspace(-1, 1, layer.bias.shape[0]).astype("float32"))
    images = _pixels(2)
    model.save(tmp_path / "model.keras")
    from training.models import load_model

    loaded = load_model(str(tmp_path / "model.keras"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(images)),
                               keras.ops.convert_to_numpy(model(images)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("init, bound", [("glorot", lambda fan_in, fan_out:
                                          np.sqrt(6 / (fan_in + fan_out))),
                                         ("torch", lambda fan_in, fan_out: 1 / np.sqrt(fan_in))])
def test_airbench_init_sets_the_weight_start(init, bound):
    """``model.init=torch`` starts convs and the head uniform in +-1/sqrt(fan_in), as PyTorch's
    Conv2d and Linear do; Keras' Glorot bound is larger (1.7x for a square 3x3 conv)."""
    model = _build(dataclasses.replace(TINY["airbench"], init=init))
    head = keras.ops.convert_to_numpy(model.get_layer("logits").kernel)
    limit = bound(*head.shape)
    assert 0.9 * limit < np.abs(head).max() <= limit
    conv = keras.ops.convert_to_numpy(model.get_layer("block2_conv1").kernel)  # (3, 3, 8, 32)
    random = conv[:, :, :, conv.shape[2]:]  # the filters past the Dirac start
    limit = bound(9 * conv.shape[2], 9 * conv.shape[3])
    assert 0.9 * limit < np.abs(random).max() <= limit
