"""The TFLite signatures of a trained model: ``classify`` and ``cam_inputs`` for Grad-CAM, and
``reference_cam_inputs``, the GradientTape reference that the exported maps are checked against.

Facts that shape this module (measured with TensorFlow 2.21, Keras 3.15, LiteRT 2.3):
- Export goes through ``keras.export.ExportArchive``. A plain ``tf.Module`` wrapper converts
  silently with all-zero weights.
- ``ReluGrad`` is not a TFLite builtin, so the head is re-applied here with activations whose
  gradients are written in builtin ops (``dy * cast(x > 0)``).
- A dynamic batch needs ``tape.gradient(logits, activations, output_gradients=onehot)`` with
  ``watch_accessed_variables=False``. Anything else pulls in ``BroadcastGradientArgs``, a
  Select-TF op.
- When the features reach the logits through a global average pool followed by affine layers
  only, the gradient of logit c is ``W_eff[:, c] / (h * w)`` at every position. No gradient
  graph is needed then, only the feature map and ``W_eff``, which is stored beside the model as
  ``cam_head.npy``. This is the cheapest path, and the most accurate one in int8.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from serving.card import GAP_HEAD, GRADIENT_HEAD
from training.models import FEATURE_LAYER, LOGITS_LAYER

__all__ = ["affine_head", "export_saved_model", "head_kind", "head_layers",
           "reference_cam_inputs"]

_AFFINE = (keras.layers.Dropout, keras.layers.Rescaling, keras.layers.Dense)


@tf.custom_gradient
def _relu(x):
    def grad(dy):
        return dy * tf.cast(x > 0, dy.dtype)

    return tf.maximum(x, 0.0), grad


@tf.custom_gradient
def _hard_swish(x):
    """x * relu6(x + 3) / 6, with a gradient made of builtin ops."""
    def grad(dy):
        inside = tf.cast(tf.logical_and(x > -3.0, x < 3.0), dy.dtype)
        upper = tf.cast(x >= 3.0, dy.dtype)
        return dy * (inside * (2.0 * x + 3.0) / 6.0 + upper)

    return x * tf.clip_by_value(x + 3.0, 0.0, 6.0) / 6.0, grad


@tf.custom_gradient
def _global_max(x):
    """(N, h, w, C) -> (N, C), with reduce_max's gradient (shared among ties) in builtin ops."""
    top = tf.reduce_max(x, axis=[1, 2], keepdims=True)

    def grad(dy):
        winners = tf.cast(tf.equal(x, top), dy.dtype)
        return dy[:, None, None, :] * winners / tf.reduce_sum(winners, axis=[1, 2], keepdims=True)

    return top[:, 0, 0, :], grad


_ACTIVATIONS = {"linear": tf.identity, "relu": _relu, "hard_silu": _hard_swish,
                "hard_swish": _hard_swish}


def head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The layers from just after the feature map up to and including the logits."""
    names = [layer.name for layer in model.layers]
    start, stop = names.index(FEATURE_LAYER) + 1, names.index(LOGITS_LAYER) + 1
    return model.layers[start:stop]


def _is_gap_head(layers: list[keras.layers.Layer]) -> bool:
    """features -> GAP -> affine layers (linear Dense, Rescaling, Dropout) -> logits."""
    return (isinstance(layers[0], keras.layers.GlobalAveragePooling2D)
            and all(isinstance(layer, _AFFINE) for layer in layers[1:])
            and not any(isinstance(layer, keras.layers.Dense)
                        and layer.activation.__name__ != "linear" for layer in layers[1:]))


def head_kind(model: keras.Model) -> str:
    """The card's head (``serving.card.HEADS``): ``GAP_HEAD`` when the gradient of each logit at
    the feature map is a constant, W_eff[:, c] / (h * w), else ``GRADIENT_HEAD``. The one rule:
    training writes it as ``model.head``, the export picks its ``cam_inputs`` signature by it."""
    return GAP_HEAD if _is_gap_head(head_layers(model)) else GRADIENT_HEAD


def affine_head(model: keras.Model) -> np.ndarray | None:
    """W_eff (C, classes) when features -> GAP -> affine layers -> logits, else None."""
    layers = head_layers(model)
    if not _is_gap_head(layers):
        return None
    channels = model.get_layer(FEATURE_LAYER).output.shape[-1]
    identity = np.eye(channels, dtype=np.float32)
    zeros = np.zeros((1, channels), dtype=np.float32)
    weights = _apply(layers[1:], identity) - _apply(layers[1:], zeros)  # (C, classes)
    return weights.astype(np.float32)


def _apply(layers, x):
    for layer in layers:
        x = layer(x, training=False)
    return keras.ops.convert_to_numpy(x)


def _head_fn(layers):
    """The head as TensorFlow ops with TFLite-friendly activation gradients."""
    def head(x):
        for layer in layers:
            if isinstance(layer, keras.layers.Dense):
                activation = layer.activation.__name__
                if activation not in _ACTIVATIONS:
                    raise NotImplementedError(
                        f"Grad-CAM export: activation {activation!r} in layer {layer.name!r}")
                x = tf.matmul(x, layer.kernel) + (layer.bias if layer.use_bias else 0.0)
                x = _ACTIVATIONS[activation](x)
            elif isinstance(layer, keras.layers.Flatten):
                x = tf.reshape(x, [tf.shape(x)[0], -1])
            elif isinstance(layer, keras.layers.GlobalAveragePooling2D):
                x = tf.reduce_mean(x, axis=[1, 2])
            elif isinstance(layer, keras.layers.GlobalMaxPooling2D):
                x = _global_max(x)
            elif isinstance(layer, keras.layers.Rescaling):
                x = x * layer.scale + layer.offset
            elif not isinstance(layer, keras.layers.Dropout):
                raise NotImplementedError(
                    f"Grad-CAM export: layer {layer.name!r} ({type(layer).__name__}) in the head")
        return x

    return head


def export_saved_model(model: keras.Model, directory: str) -> str:
    """Write a SavedModel with ``classify`` and ``cam_inputs``; return the head kind
    (``head_kind``)."""
    features = model.get_layer(FEATURE_LAYER).output
    two_outputs = keras.Model(model.input, [model.output, features], name="cam_model")
    height, width, channels = model.input_shape[1:]
    image = tf.TensorSpec([None, height, width, channels], tf.float32, name="image")
    archive = keras.export.ExportArchive()
    archive.track(two_outputs)

    def classify(image):
        return {"probabilities": two_outputs(image, training=False)[0]}

    archive.add_endpoint("classify", classify, input_signature=[image])
    kind = head_kind(model)
    if kind == GAP_HEAD:
        def cam_inputs(image):
            probabilities, activations = two_outputs(image, training=False)
            return {"probabilities": probabilities, "activations": activations}

        archive.add_endpoint("cam_inputs", cam_inputs, input_signature=[image])
    else:
        head = _head_fn(head_layers(model))
        features_model = keras.Model(model.input, features)
        archive.track(features_model)
        classes = model.output.shape[-1]
        onehot = tf.TensorSpec([None, classes], tf.float32, name="class_onehot")

        def cam_inputs_with_target(image, class_onehot):
            activations = features_model(image, training=False)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(activations)
                logits = head(activations)
            gradients = tape.gradient(logits, activations, output_gradients=class_onehot)
            return {"probabilities": tf.nn.softmax(logits), "activations": activations,
                    "gradients": gradients}

        archive.add_endpoint("cam_inputs", cam_inputs_with_target, input_signature=[image, onehot])
    archive.write_out(directory, verbose=False)
    return kind


def reference_cam_inputs(model: keras.Model, images: np.ndarray,
                         targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(activations, gradients of the target logits) at the feature map, float32, by a
    GradientTape on the Keras model (the keras-io Grad-CAM example's method): the float
    reference that the maps of the exported TFLite models are checked against."""
    probe = keras.Model(model.input, [model.get_layer(FEATURE_LAYER).output,
                                      model.get_layer(LOGITS_LAYER).output])
    with tf.GradientTape() as tape:
        activations, logits = probe(tf.constant(images, tf.float32), training=False)
        score = tf.reduce_sum(tf.cast(logits, tf.float32)
                              * tf.one_hot(targets, logits.shape[-1]), axis=1)
    gradients = tape.gradient(score, activations)
    return (keras.ops.convert_to_numpy(activations).astype(np.float32),
            keras.ops.convert_to_numpy(gradients).astype(np.float32))
