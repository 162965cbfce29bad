"""Train a small model on the built-in shapes for a few seconds; check what it learned and wrote."""

import json

import keras
import numpy as np
import pytest

from serving.card import GAP_HEAD, load_card
from training.evaluate import evaluate_artifact


@pytest.fixture(scope="module")
def artifact(trained):
    return trained("gap")


def test_beats_chance_by_a_wide_margin(artifact):
    card = load_card(artifact)
    chance = 1 / len(card.labels)
    assert card.metrics["validation"]["accuracy"] > chance + 0.35, card.metrics["validation"]


def test_writes_a_valid_card(artifact):
    card = load_card(artifact)
    assert card.labels == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert (card.input.height, card.input.width, card.input.channels) == (32, 32, 3)
    assert len(card.normalization["mean"]) == 3 and min(card.normalization["std"]) > 1
    assert card.model.feature_layer == "features" and card.model.head == GAP_HEAD
    assert len(card.dataset["fingerprint"]) == 64 and card.dataset["num_val"] == 120
    assert sum(card.reference.confidence.counts) == 120
    assert sum(card.reference.class_prior) == pytest.approx(1.0)
    assert len(card.files["model.keras"].sha256) == 64
    assert card.files["model.keras"].bytes == (artifact / "model.keras").stat().st_size
    assert card.deployable is False  # only a quantization that passes its gate may set it
    assert card.created_at and card.training["epochs"] == 6
    assert card.name == "gap"


def test_artifact_files(artifact):
    for name in ("model.keras", "config.yaml", "history.csv", "history.json",
                 "checkpoint.weights.h5", "card.json"):
        assert (artifact / name).is_file(), name
    history = json.loads((artifact / "history.json").read_text())
    assert len(history["loss"]) == 6 and len(history["learning_rate"]) == 6
    assert history["learning_rate"][-1] < history["learning_rate"][0]  # cosine decayed
    assert (artifact.parent / "latest").resolve() == artifact.resolve()
    assert list((artifact / "logs" / "train").glob("events.out.tfevents.*"))  # TensorBoard


def test_standardisation_is_baked_in(artifact):
    model = keras.models.load_model(artifact / "model.keras")
    card = load_card(artifact)
    mean_image = np.broadcast_to(np.float32(card.normalization["mean"]), (1, 32, 32, 3))
    standardize = keras.Model(model.input, model.get_layer("standardize").output)
    np.testing.assert_allclose(standardize(mean_image).numpy(), 0.0, atol=1e-4)


def test_evaluate_writes_per_class_metrics_and_confusion(artifact):
    metrics = evaluate_artifact(artifact)
    card = load_card(artifact)
    assert card.metrics["evaluation"]["accuracy"] == pytest.approx(metrics["accuracy"])
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.shape == (6, 6) and confusion.sum() == 120
    assert np.trace(confusion) / 120 == pytest.approx(metrics["accuracy"])
    assert set(metrics["per_class"]["star"]) == {"precision", "recall", "f1", "support"}
