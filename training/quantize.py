"""Keras artifact -> TFLite variants that carry Grad-CAM's inputs, each verified with LiteRT.

``python -m training quantize ARTIFACT --mode int8 [--mode float32 ...]``

- The first mode becomes ``model.tflite``, the one that serving loads. Each other mode becomes
  ``model.<mode>.tflite``.
- Modes:
  - ``float32``: plain conversion.
  - ``float16``: float16 weights.
  - ``dynamic``: int8 weights with float activations.
  - ``int8``: full-integer post-training quantisation, calibrated on a representative sample
    of the training split, with uint8 pixels in and float32 out. The input needs no scaling,
    because standardisation is inside the model.
- Every variant is run with the LiteRT interpreter on the validation split. Its accuracy,
  agreement with Keras, size and sha256 go into the card.
- The gate: when int8 loses more than ``max_drop`` points of top-1 against Keras, the command
  fails and the artifact is not deployable.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from serving.card import (
    GRADIENT_HEAD,
    MODEL_FILE,
    CamSpec,
    FileEntry,
    Gate,
    Quantization,
    Variant,
    save_card,
)
from serving.runtime.interpreter import TFLiteModel
from training import models
from training.artifact import load_artifact
from training.cam_export import affine_head, export_saved_model
from training.errors import UserError

__all__ = ["MODES", "QuantizationGateError", "float32_model", "quantize_artifact"]

log = logging.getLogger("sightline.training")

MODES = ("int8", "float16", "dynamic", "float32")
CAM_HEAD_FILE = "cam_head.npy"


class QuantizationGateError(UserError):
    """A quantized model lost more accuracy than allowed; the artifact stays undeployable."""


def quantize_artifact(artifact_dir: str | Path, modes: list[str] = ("int8",),
                      representative_size: int = 500, max_drop: float = 1.0) -> Quantization:
    artifact_dir = Path(artifact_dir)
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown quantization mode {mode!r}; known: {', '.join(MODES)}")
    artifact = load_artifact(artifact_dir)
    card, config, dataset = artifact.card, artifact.config, artifact.dataset
    model = float32_model(artifact.model, config, card)
    keras_probabilities = model.predict(dataset.val_images.astype(np.float32), batch_size=256,
                                        verbose=0)
    keras_accuracy = float((keras_probabilities.argmax(1) == dataset.val_labels).mean())

    variants, head_weights = {}, affine_head(model)
    with tempfile.TemporaryDirectory() as tmp:
        head = export_saved_model(model, tmp)
        sample = _representative(dataset.train_images, representative_size, config.seed)
        for i, mode in enumerate(modes):
            name = MODEL_FILE if i == 0 else f"model.{mode}.tflite"
            started = time.perf_counter()
            (artifact_dir / name).write_bytes(_convert(tmp, mode, sample, card.num_classes,
                                                       with_target=head == GRADIENT_HEAD))
            log.info("converted %s in %.1f s", name, time.perf_counter() - started)
            variants[mode] = _verify(artifact_dir / name, dataset, keras_probabilities)
    if head_weights is not None:
        np.save(artifact_dir / CAM_HEAD_FILE, head_weights, allow_pickle=False)
        card.files[CAM_HEAD_FILE] = FileEntry.of(artifact_dir / CAM_HEAD_FILE)

    drops = {mode: round(100 * (keras_accuracy - v.accuracy), 3) for mode, v in variants.items()}
    failed = [m for m, drop in drops.items() if m == "int8" and drop > max_drop]
    for variant in variants.values():
        card.files[variant.file] = FileEntry(sha256=variant.sha256, bytes=variant.bytes)
    cam = CamSpec(signature="cam_inputs", head=head,
                  head_weights=CAM_HEAD_FILE if head_weights is not None else None)
    card.model = dataclasses.replace(card.model, head=head, cam=cam)
    card.quantization = Quantization(
        keras_accuracy=keras_accuracy,
        primary=modes[0],
        variants=variants,
        gate=Gate(max_drop_points=max_drop, drop_points=drops, passed=not failed),
        representative_size=len(sample),
    )
    card.deployable = not failed
    save_card(card, artifact_dir)
    if failed:
        raise QuantizationGateError(
            f"int8 lost {drops['int8']:.2f} points of top-1 against Keras "
            f"({keras_accuracy:.4f} -> {variants['int8'].accuracy:.4f}); the limit is "
            f"{max_drop} points: {artifact_dir} is not deployable")
    return card.quantization


def float32_model(model: keras.Model, config, card) -> keras.Model:
    """A mixed-precision model is rebuilt in float32 with its weights copied: TFLite's
    converter and the int8 calibrator expect float32 graphs."""
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        rebuilt = models.build_model(
            config.model, input_shape=model.input_shape[1:], num_classes=card.num_classes,
            mean=card.normalization["mean"], std=card.normalization["std"])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _representative(images: np.ndarray, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return images[rng.choice(len(images), size=min(size, len(images)), replace=False)]


def _convert(saved_model: str, mode: str, sample: np.ndarray, num_classes: int,
             with_target: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model, signature_keys=["classify", "cam_inputs"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.representative_dataset = _calibration(sample, num_classes, with_target)
    return converter.convert()


def _calibration(sample: np.ndarray, num_classes: int, with_target: bool):
    """Yield (signature, inputs) pairs: the converter calibrates every signature."""
    def generate():
        onehot = np.eye(num_classes, dtype=np.float32)
        for i, image in enumerate(sample):
            image = image[None].astype(np.float32)
            yield "classify", {"image": image}
            cam = {"image": image}
            if with_target:
                cam["class_onehot"] = onehot[i % num_classes][None]
            yield "cam_inputs", cam
    return generate


def _verify(path: Path, dataset, keras_probabilities: np.ndarray) -> Variant:
    runtime = TFLiteModel(path)
    probabilities = np.concatenate([runtime.classify(dataset.val_images[i:i + 256])
                                    for i in range(0, len(dataset.val_images), 256)])
    predicted = probabilities.argmax(1)
    entry = FileEntry.of(path)
    return Variant(
        accuracy=float((predicted == dataset.val_labels).mean()),
        agreement=float((predicted == keras_probabilities.argmax(1)).mean()),
        max_abs_probability_error=float(np.abs(probabilities - keras_probabilities).max()),
        latency_ms_batch1=_latency(runtime, dataset.val_images[:1]),
        sha256=entry.sha256,
        bytes=entry.bytes,
        file=path.name,
    )


def _latency(runtime: TFLiteModel, image: np.ndarray, repeats: int = 30) -> float:
    runtime.classify(image)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.classify(image)
        times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 3)
