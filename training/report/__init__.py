"""``python -m training report ARTIFACT``: one self-contained HTML page about a trained model.

``write_report(artifact_dir)`` writes ``<artifact>/report.html`` and returns its path. It reads
the artifact (model, card, config, history), regenerates the validation split from the config,
predicts it once and draws: training curves, confusion matrices, per-class scores, the most
confident mistakes, first-layer filters and feature maps, a Grad-CAM gallery and the
quantization table. The gallery explains each image's predicted class. Its CAM inputs come from
``model.tflite`` through the serving code when the artifact is quantized (what the server
would show), else from a GradientTape on the Keras model; the page says which.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serving.cam import METHODS, get_method
from serving.card import MODEL_FILE, ModelCard
from training.report import figures
from training.report.page import Figure, render

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"
MAX_MISTAKES = 24


def write_report(artifact_dir: str | Path) -> Path:
    from training.artifact import load_artifact
    from training.evaluate import predict

    artifact_dir = Path(artifact_dir)
    artifact = load_artifact(artifact_dir)
    card, config, dataset, model = artifact.card, artifact.config, artifact.dataset, artifact.model
    history = json.loads((artifact_dir / "history.json").read_text())
    evaluation = card.metrics["evaluation"]
    # the same predictions as the card's metrics, so the mistakes shown match its matrix
    probabilities = predict(model, dataset.val_images, config.batch_size,
                            evaluation.get("tta_flip", False),
                            evaluation.get("tta_translate", False))
    images, labels, names = dataset.val_images, dataset.val_labels, dataset.class_names
    predicted, confidence = probabilities.argmax(1), probabilities.max(1)

    out = {
        "curves": [Figure(figures.training_curves(history), f"Training and validation loss and "
                          f"accuracy, and the learning rate, over {len(history['loss'])} "
                          "epochs")],
        "confusion": [Figure(figures.confusion_matrices(evaluation["confusion_matrix"], names),
                             "Confusion matrix of the validation split, rows true classes, "
                             "columns predicted: counts and row-normalised shares")],
        "per_class": [Figure(figures.per_class_bars(evaluation["per_class"], names),
                             "Bar chart of precision, recall and F1 for each class")],
    }
    notes = {}
    out["mistakes"], notes["mistakes"] = _mistakes(images, labels, predicted, confidence, names)
    out["filters"], notes["filters"] = _filters(model, images, labels, predicted, confidence,
                                                names)
    out["gradcam"], notes["gradcam"] = _gallery(artifact_dir, card, model, images, labels,
                                                predicted, confidence, names)
    path = artifact_dir / REPORT_FILE
    path.write_text(render(card, out, notes), encoding="utf-8")
    return path


def _mistakes(images, labels, predicted, confidence, names):
    """The most confident mistakes first: those say most about what the model gets wrong."""
    wrong = np.flatnonzero(predicted != labels)
    if not len(wrong):
        return [], "No validation image is misclassified."
    shown = wrong[np.argsort(-confidence[wrong], kind="stable")][:MAX_MISTAKES]
    titles = [f"true: {names[labels[i]]}\npred: {names[predicted[i]]} {confidence[i]:.2f}"
              for i in shown]
    alt = (f"Grid of {len(shown)} misclassified validation images, each titled with its true "
           f"class, the predicted class and the model's confidence")
    return ([Figure(figures.image_grid(images[shown], titles), alt)],
            f"{len(wrong)} of {len(labels)} validation images are misclassified; the "
            f"{len(shown)} most confident mistakes are shown.")


def _sample(labels, predicted, confidence) -> int:
    """The most confidently correct image (any image when none is correct)."""
    correct = np.flatnonzero(predicted == labels)
    pool = correct if len(correct) else np.arange(len(labels))
    return int(pool[np.argmax(confidence[pool])])


def _filters(model, images, labels, predicted, confidence, names):
    """First-layer kernels, and a sample's maps after that layer and at ``features``."""
    import keras

    first = next((layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)),
                 None)
    if first is None:
        return [], "The model has no Conv2D layer whose filters could be drawn."
    kernel = keras.ops.convert_to_numpy(first.kernel).astype(np.float32)
    probe = keras.Model(model.input, [first.output, model.get_layer("features").output])
    index = _sample(labels, predicted, confidence)
    maps = [keras.ops.convert_to_numpy(m)[0].astype(np.float32)
            for m in probe(images[index:index + 1].astype(np.float32), training=False)]
    channels = min(8, maps[0].shape[-1], maps[1].shape[-1])
    return [
        Figure(figures.first_layer_filters(kernel),
               f"The {kernel.shape[-1]} filters of the first convolution, {first.name!r}, "
               f"{kernel.shape[0]}x{kernel.shape[1]} each, shown as images",
               f"{first.name}: {kernel.shape[0]}x{kernel.shape[1]}x{kernel.shape[2]} kernels"),
        Figure(figures.feature_maps(images[index], [(first.name, maps[0]),
                                                    ("features", maps[1])], channels),
               f"One validation image and the {channels} most active channels of its feature "
               f"maps after {first.name!r} and at 'features'",
               "Channels ordered by mean activation, strongest first"),
    ], (f"Feature maps of validation image {index}, a {names[labels[index]]} predicted with "
        f"confidence {confidence[index]:.2f}.")


def _gallery(artifact_dir: Path, card: ModelCard, model, images, labels, predicted,
             confidence, names):
    """Per class: its most confident correct and wrong image, under every CAM method."""
    chosen = []  # (class, index, correct?)
    for c in range(len(names)):
        for correct in (True, False):
            pool = np.flatnonzero((labels == c) & ((predicted == c) == correct))
            if len(pool):
                chosen.append((c, int(pool[np.argmax(confidence[pool])]), correct))
    if not chosen:
        return [], "No validation images to explain."
    index = np.array([i for _, i, _ in chosen])
    activations, gradients, source = _cam_inputs(artifact_dir, card, model, images[index],
                                                 predicted[index])
    maps = {name: get_method(name)(activations, gradients) for name in METHODS}
    out = []
    for c in tqdm(range(len(names)), desc="Grad-CAM gallery", unit="class"):
        rows, words = [], []
        for k, (cls, i, correct) in enumerate(chosen):
            if cls != c:
                continue
            verdict = "correct" if correct else f"wrong: {names[predicted[i]]}"
            rows.append((f"{names[c]} ({verdict})\nconfidence {confidence[i]:.2f}", images[i],
                         {name: m[k] for name, m in maps.items()}))
            words.append(f"a {'correctly' if correct else 'wrongly'} classified example "
                         f"(predicted {names[predicted[i]]}, confidence {confidence[i]:.2f})")
        if rows:
            alt = (f"Class {names[c]}: {' and '.join(words)}, each shown with heatmap overlays "
                   f"for {', '.join(METHODS)}")
            out.append(Figure(figures.cam_gallery(rows), alt, f"class {names[c]}"))
    return out, (f"Heatmaps for the predicted class, computed from {source}. Each row: the "
                 "image, then one overlay per method (bright = more evidence).")


def _cam_inputs(artifact_dir: Path, card: ModelCard, model, images, targets):
    """(activations, gradients, where they came from) for explaining ``targets``."""
    tflite = artifact_dir / MODEL_FILE
    if tflite.is_file() and card.cam is not None and card.quantization is not None:
        from serving.runtime.explain import activations_and_gradients, load_head_weights
        from serving.runtime.interpreter import TFLiteModel

        weights = load_head_weights(artifact_dir, card)
        _, activations, gradients, _ = activations_and_gradients(
            TFLiteModel(tflite), images, targets, weights)
        primary = card.quantization.primary
        return activations, gradients, f"model.tflite ({primary}) through the serving code"
    from training.cam_export import reference_cam_inputs

    activations, gradients = reference_cam_inputs(model, images, targets)
    return (activations, gradients,
            "the Keras model (model.keras): the artifact has no quantized model.tflite yet")
