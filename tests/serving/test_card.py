import json

import numpy as np
import pytest

from serving.card import CARD_FILE, CardError, InputSpec, ModelCard, load_card, save_card
from serving.reference_stats import (
    BRIGHTNESS_EDGES,
    CONFIDENCE_EDGES,
    brightness,
    histogram,
    reference_stats,
)


def make_card(**overrides) -> ModelCard:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    fields = dict(
        labels=["cat", "dog"],
        input=InputSpec(height=4, width=4),
        normalization={"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]},
        model={"family": "basic_cnn"},
        dataset={"name": "shapes"},
        reference=reference_stats(probabilities, images),
    )
    return ModelCard(**{**fields, **overrides})


def test_round_trip(tmp_path):
    card = make_card(version=3, files={"model.tflite": {"sha256": "ab", "bytes": 1}})
    save_card(card, tmp_path)
    loaded = load_card(tmp_path)
    assert loaded == card
    assert loaded.input.value_range == (0.0, 255.0)
    assert loaded.num_classes == 2


def test_reference_stats_counts():
    card = make_card()
    assert card.reference.class_prior == pytest.approx([2 / 3, 1 / 3])
    assert sum(card.reference.confidence.counts) == 3
    assert card.reference.brightness.counts[0] == 3  # black images: first brightness bin


def test_brightness_is_mean_luma():
    white = np.full((1, 2, 2, 3), 255, dtype=np.uint8)
    red = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    red[..., 0] = 200
    assert brightness(white)[0] == pytest.approx(255.0, rel=1e-5)
    assert brightness(red)[0] == pytest.approx(0.299 * 200, rel=1e-5)


def test_histogram_clips_outliers_into_edge_bins():
    hist = histogram(np.array([-5.0, 0.5, 1.0, 2.0]), CONFIDENCE_EDGES)
    assert hist.counts[0] == 1 and hist.counts[-1] == 2
    assert len(BRIGHTNESS_EDGES) == 17


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("labels"), "missing the field 'labels'"),
        (lambda d: d.update(labels=["one"]), "at least 2 labels"),
        (lambda d: d.update(labels=["a", "a"]), "labels must be unique"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.update(colour="red"), "does not match the schema"),
        (lambda d: d["reference"].update(class_prior=[1.0]), "class_prior has 1 entries"),
        (lambda d: d["reference"]["confidence"].update(counts=[1]), "len\\(edges\\)"),
    ],
)
def test_schema_violations_fail_at_load(tmp_path, change, message):
    data = make_card().to_dict()
    change(data)
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CardError, match=message):
        load_card(tmp_path)


def test_unreadable_cards(tmp_path):
    with pytest.raises(CardError, match="no card.json"):
        load_card(tmp_path)
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(CardError, match="cannot read"):
        load_card(tmp_path)
    (tmp_path / CARD_FILE).write_text("[1, 2]")
    with pytest.raises(CardError, match="must be a JSON object"):
        load_card(tmp_path)
