"""The model registry: one name per network family, one way to build them all.

Every model built here has the same contract, which training, evaluation, Grad-CAM and the
TFLite export rely on:

* input ``"image"``: float32 RAW pixels in [0, 255], shape ``input_shape`` (H, W, C);
* first layer ``"standardize"``: per-channel ``(x - mean) / std`` baked into the graph, so the
  server feeds pixels and never needs the dataset statistics (it computes in float32 even
  under ``mixed_bfloat16``: bfloat16 cannot hold 200.7 to better than 0.5);
* ``FEATURE_LAYER`` (``"features"``): the last convolutional feature map (N, h, w, C), after
  its activation; it feeds the global average pool (the Flatten for ``basic_cnn``);
* ``LOGITS_LAYER`` (``"logits"``): the final Dense, no activation;
* ``OUTPUT_LAYER`` (``"probabilities"``): softmax in float32, so mixed precision stays stable.

A family module exposes ``build(x, config, num_classes) -> logits tensor``; some also expose
``initialize_from_data(model, images)`` for a data-dependent initialisation (airbench's
patch whitening), which ``initialize_from_data`` below dispatches to. ``MODELS`` names each
family's module, imported at the first build: the config check reads the names without
importing TensorFlow.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from training.config import ModelConfig
from training.errors import UserError

if TYPE_CHECKING:
    import keras

__all__ = [
    "FEATURE_LAYER",
    "LOGITS_LAYER",
    "MODELS",
    "OUTPUT_LAYER",
    "build_model",
    "initialize_from_data",
    "load_model",
]

FEATURE_LAYER = "features"
LOGITS_LAYER = "logits"
OUTPUT_LAYER = "probabilities"

MODELS: dict[str, str] = {  # name -> family module under training.models
    "basic_cnn": "basic_cnn",
    "resnet": "resnet",
    "mobilenet_v3_small": "mobilenet_v3",
    "airbench": "airbench",
}


def build_model(
    config: ModelConfig,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> keras.Model:
    """Raw pixels -> standardize -> the family's body and logits -> float32 softmax."""
    import keras

    if config.name not in MODELS:
        raise UserError(f"unknown model {config.name!r}; known: {', '.join(MODELS)}")
    family = importlib.import_module(f"{__name__}.{MODELS[config.name]}")
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Normalization(
        mean=mean, variance=np.square(std), dtype="float32", name="standardize"
    )(inputs)
    logits = family.build(x, config, num_classes)
    outputs = keras.layers.Activation("softmax", dtype="float32", name=OUTPUT_LAYER)(logits)
    return keras.Model(inputs, outputs, name=config.name)


def initialize_from_data(model: keras.Model, images: np.ndarray) -> None:
    """Run the family's data-dependent initialisation on raw training images; a no-op if none.

    Call it once, after ``build_model`` and before training, with raw [0, 255] pixels.
    """
    from training.models import airbench

    if airbench.WHITEN_LAYER in {layer.name for layer in model.layers}:
        airbench.initialize_from_data(model, images)


def load_model(path) -> keras.Model:
    """A saved ``model.keras``, with every family's custom layers registered first (airbench's
    ``ScaledBias``): a fresh process that imported no family could not rebuild them."""
    import keras

    for module in set(MODELS.values()):
        importlib.import_module(f"{__name__}.{module}")
    return keras.models.load_model(path, compile=False)
