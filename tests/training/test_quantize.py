"""Quantization: every mode verified with LiteRT, the int8 gate, and Grad-CAM parity of the
TFLite model against a TensorFlow GradientTape reference on the Keras model."""

import numpy as np
import pytest

from serving.cam import get_method
from serving.cam.faithfulness import map_correlation
from serving.card import GAP_HEAD, GRADIENT_HEAD, FileEntry, load_card
from serving.runtime.explain import activations_and_gradients, load_head_weights
from serving.runtime.interpreter import TFLiteModel
from training.cam_export import reference_cam_inputs
from training.config import load_config
from training.data import load_dataset
from training.models import load_model
from training.quantize import QuantizationGateError, quantize_artifact


@pytest.fixture(scope="module", params=["gap", "dense", "max"])
def quantized(request, trained):
    artifact = trained(request.param)
    report = quantize_artifact(artifact, ["int8", "float32", "float16", "dynamic"],
                               representative_size=200, max_drop=100.0)
    return request.param, artifact, report


def images_of(artifact, n=24):
    config = load_config(artifact / "config.yaml")
    dataset = load_dataset(config.data, config.seed)
    return dataset.val_images[:n], dataset.val_labels[:n]


def test_every_mode_is_written_verified_and_recorded(quantized):
    kind, artifact, report = quantized
    card = load_card(artifact)
    assert card.deployable and card.quantization.gate.passed
    assert report == card.quantization and report.primary == "int8"
    assert set(report.variants) == {"int8", "float32", "float16", "dynamic"}
    assert report.variants["int8"].file == "model.tflite"
    for mode, variant in report.variants.items():
        assert (artifact / variant.file).stat().st_size == variant.bytes, mode
        assert card.files[variant.file] == FileEntry(variant.sha256, variant.bytes)
        assert card.files[variant.file] == FileEntry.of(artifact / variant.file)
        assert 0.0 <= variant.accuracy <= 1.0 and variant.latency_ms_batch1 > 0
    assert report.variants["float32"].agreement == 1.0
    assert report.variants["float32"].max_abs_probability_error < 1e-4
    # tiny, briefly trained test models; the 98.5% is measured on CIFAR-10 (benchmarks)
    assert report.variants["int8"].agreement >= 0.8
    assert report.variants["int8"].bytes < 0.4 * report.variants["float32"].bytes
    head = GAP_HEAD if kind == "gap" else GRADIENT_HEAD  # "dense": flatten + dense; "max"
    assert card.cam.head == card.model.head == head  # one rule wrote both
    assert card.served_files == (["model.tflite", "cam_head.npy"] if head == GAP_HEAD
                                 else ["model.tflite"])


def test_int8_takes_uint8_pixels_and_gives_probabilities(quantized):
    _, artifact, _ = quantized
    model = TFLiteModel(artifact / "model.tflite")
    assert model.input_dtype == np.uint8
    images, _ = images_of(artifact, 4)
    probabilities = model.classify(images)
    assert probabilities.shape == (4, 6) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)


def tflite_cam_inputs(artifact, file, images, targets):
    weights = load_head_weights(artifact, load_card(artifact))
    _, activations, gradients, _ = activations_and_gradients(
        TFLiteModel(artifact / file), images, targets, weights)
    return activations, gradients


def correlations(a, b):
    return map_correlation(a, b)


def served_and_reference_heatmaps(artifact, file):
    """Grad-CAM from the TFLite file and from the Keras reference, for informative maps only
    (a flat map has no correlation to speak of)."""
    images, targets = images_of(artifact, 48)
    gradcam = get_method("gradcam")
    model = load_model(artifact / "model.keras")
    reference = gradcam(*reference_cam_inputs(model, images, targets))
    heatmaps = gradcam(*tflite_cam_inputs(artifact, file, images, targets))
    informative = reference.std(axis=(1, 2)) > 0
    # The seed CNN learns little in the fixture's 6 epochs (val. accuracy near chance), so many
    # of its maps are all-negative (flat); a third informative leaves 16 maps to compare.
    assert informative.mean() >= 1 / 3
    return heatmaps[informative], reference[informative]


def test_float_heatmaps_match_the_gradient_tape_reference(quantized):
    heatmaps, reference = served_and_reference_heatmaps(quantized[1], "model.float32.tflite")
    assert correlations(heatmaps, reference).min() >= 0.9999
    assert np.abs(heatmaps - reference).max() <= 1e-4


def test_int8_heatmaps_track_the_reference(quantized):
    heatmaps, reference = served_and_reference_heatmaps(quantized[1], "model.tflite")
    flat = heatmaps.std(axis=(1, 2)) == 0
    r = correlations(heatmaps[~flat], reference[~flat])
    # int8 activations carry ~8 bits, and the tiny test models are briefly trained: most maps
    # match to r > 0.999, a few do not (and a few come out flat). The 0.999 / 0.99
    # targets are measured on the CIFAR-10 model in docs/benchmarks.md, not here.
    assert flat.mean() <= 0.25 and np.median(r) >= 0.995 and (r >= 0.98).mean() >= 0.75, r


def test_batched_equals_per_image(quantized):
    _, artifact, _ = quantized
    images, targets = images_of(artifact, 6)
    batched = tflite_cam_inputs(artifact, "model.tflite", images, targets)
    for i in range(len(images)):
        single = tflite_cam_inputs(artifact, "model.tflite", images[i:i + 1], targets[i:i + 1])
        np.testing.assert_allclose(single[0][0], batched[0][i], atol=1e-6)
        np.testing.assert_allclose(single[1][0], batched[1][i], atol=1e-6)


def test_the_gate_refuses_a_model_that_lost_too_much(trained):
    artifact = trained("gap")
    with pytest.raises(QuantizationGateError, match="int8 lost .* points"):
        quantize_artifact(artifact, ["int8"], representative_size=50, max_drop=-100.0)
    card = load_card(artifact)
    assert card.deployable is False and card.quantization.gate.passed is False
