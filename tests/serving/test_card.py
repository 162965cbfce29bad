import dataclasses
import hashlib
import json

import numpy as np
import pytest

from serving.card import (
    CARD_FILE,
    GAP_HEAD,
    GRADIENT_HEAD,
    HEADS,
    MODEL_FILE,
    CamSpec,
    CardError,
    FileEntry,
    Gate,
    InputSpec,
    ModelCard,
    ModelSpec,
    Quantization,
    Variant,
    file_sha256,
    load_card,
    save_card,
)
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


def variant(file: str, **overrides) -> Variant:
    fields = dict(accuracy=0.95, agreement=0.99, max_abs_probability_error=0.05,
                  latency_ms_batch1=0.08, sha256="cd" * 32, bytes=1234, file=file)
    return Variant(**{**fields, **overrides})


def quantized_card(**overrides) -> ModelCard:
    """Every typed section filled in, as training.export and training.quantize write them."""
    fields = dict(
        model=ModelSpec(family="airbench", feature_layer="features", logits_layer="logits",
                        head=GAP_HEAD, parameters=127104,
                        cam=CamSpec(signature="cam_inputs", head=GAP_HEAD,
                                    head_weights="cam_head.npy")),
        files={"model.keras": FileEntry("ab" * 32, 99), MODEL_FILE: FileEntry("cd" * 32, 1234),
               "model.float32.tflite": FileEntry("ef" * 32, 4321),
               "cam_head.npy": FileEntry("01" * 32, 12)},
        quantization=Quantization(
            keras_accuracy=0.96, primary="int8",
            variants={"int8": variant(MODEL_FILE),
                      "float32": variant("model.float32.tflite", sha256="ef" * 32, bytes=4321)},
            gate=Gate(max_drop_points=1.0, drop_points={"int8": 0.125, "float32": 0.0},
                      passed=True),
            representative_size=500),
        deployable=True,
    )
    return make_card(**{**fields, **overrides})


def test_every_section_round_trips(tmp_path):
    card = quantized_card()
    save_card(card, tmp_path)
    loaded = load_card(tmp_path)
    assert loaded == card
    assert isinstance(loaded.model, ModelSpec) and isinstance(loaded.cam, CamSpec)
    assert loaded.cam.head_weights == "cam_head.npy"
    assert loaded.files[MODEL_FILE] == FileEntry("cd" * 32, 1234)
    assert loaded.quantization.variants["int8"].file == MODEL_FILE
    assert loaded.quantization.gate.drop_points == {"int8": 0.125, "float32": 0.0}
    assert loaded.served_files == [MODEL_FILE, "cam_head.npy"]


def test_the_json_layout_is_the_one_cards_always_had(tmp_path):
    """Cards written before the typed sections must load, and saving writes them back as they
    were: plain objects, in the same key order, ``{}`` for no quantization, no ``cam`` key
    before quantization."""
    data = quantized_card().to_dict()
    assert list(data["model"]) == ["family", "feature_layer", "logits_layer", "head",
                                   "parameters", "cam"]
    assert data["model"]["cam"] == {"signature": "cam_inputs", "head": "gap",
                                    "head_weights": "cam_head.npy"}
    assert data["files"][MODEL_FILE] == {"sha256": "cd" * 32, "bytes": 1234}
    assert list(data["quantization"]) == ["keras_accuracy", "primary", "variants", "gate",
                                          "representative_size"]
    assert list(data["quantization"]["variants"]["int8"]) == [
        "accuracy", "agreement", "max_abs_probability_error", "latency_ms_batch1", "sha256",
        "bytes", "file"]
    assert data["quantization"]["gate"] == {"max_drop_points": 1.0,
                                            "drop_points": {"int8": 0.125, "float32": 0.0},
                                            "passed": True}
    text = json.dumps(data, indent=2) + "\n"
    (tmp_path / CARD_FILE).write_text(text)
    save_card(load_card(tmp_path), tmp_path)
    assert (tmp_path / CARD_FILE).read_text() == text

    plain = make_card(model={"family": "basic_cnn"}).to_dict()
    assert plain["model"] == {"family": "basic_cnn"} and plain["quantization"] == {}
    assert make_card(model={"family": "basic_cnn"}).quantization is None


@pytest.mark.parametrize("where", ["model.head", "model.cam.head"])
def test_a_card_with_the_old_head_spelling_loads(tmp_path, where):
    """Training wrote model.head "dense" for what the export calls "gradient"."""
    data = quantized_card(model={"family": "basic_cnn", "head": "gradient", "cam": {
        "signature": "cam_inputs", "head": "gradient", "head_weights": None}}).to_dict()
    section = data["model"] if where == "model.head" else data["model"]["cam"]
    section["head"] = "dense"
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    card = load_card(tmp_path)
    assert card.model.head == card.cam.head == GRADIENT_HEAD
    assert HEADS == (GAP_HEAD, GRADIENT_HEAD) == ("gap", "gradient")


def test_a_card_before_quantization_with_the_old_head_spelling_loads(tmp_path):
    data = make_card(model={"family": "basic_cnn", "head": "dense", "parameters": 5}).to_dict()
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    card = load_card(tmp_path)
    assert card.model == ModelSpec(family="basic_cnn", head=GRADIENT_HEAD, parameters=5)
    assert card.cam is None and card.served_files == [MODEL_FILE]


def test_the_export_head_wins_over_an_old_looser_model_head(tmp_path):
    """Old training called any model with a global pool "gap", so a GAP -> hard-swish Dense head
    (mobilenet_v3) read "gap" while its export, rightly, said "gradient"."""
    data = quantized_card().to_dict()
    data["model"]["cam"].update(head="gradient", head_weights=None)
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    assert load_card(tmp_path).model.head == GRADIENT_HEAD
    with pytest.raises(CardError, match="model.head 'gap' disagrees with model.cam.head"):
        make_card(model=ModelSpec(head=GAP_HEAD, cam=CamSpec("cam_inputs", GRADIENT_HEAD)))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["model"].update(head="global"),
     "model.head must be one of gap, gradient; got 'global'"),
    (lambda d: d["model"]["cam"].update(head=None), "model.cam.head must be one of"),
    (lambda d: d["model"]["cam"].pop("signature"),
     "model.cam is missing the field 'signature'"),
    (lambda d: d["model"].update(cam=[1]), "model.cam must be an object"),
    (lambda d: d["model"].update(layers=3), "model has an unknown field 'layers'"),
    (lambda d: d["model"].update(parameters="many"), "model.parameters must be an integer"),
    (lambda d: d["files"][MODEL_FILE].pop("sha256"),
     "files\\['model.tflite'\\] is missing the field 'sha256'"),
    (lambda d: d["files"][MODEL_FILE].update(bytes="1k"),
     "files\\['model.tflite'\\].bytes must be an integer; got '1k'"),
    (lambda d: d["files"].update(extra="x"), "files\\['extra'\\] must be an object"),
    (lambda d: d.update(files=[]), "files must be an object"),
    (lambda d: d["quantization"].update(primary="int4"),
     "quantization.primary 'int4' is not one of its variants"),
    (lambda d: d["quantization"].pop("gate"), "quantization is missing the field 'gate'"),
    (lambda d: d["quantization"]["variants"]["int8"].update(accuracy=True),
     "quantization.variants\\['int8'\\].accuracy must be a number; got True"),
    (lambda d: d["quantization"]["variants"]["float32"].pop("file"),
     "quantization.variants\\['float32'\\] is missing the field 'file'"),
    (lambda d: d["quantization"]["gate"].update(passed="yes"),
     "quantization.gate.passed must be true or false"),
    (lambda d: d["quantization"]["gate"]["drop_points"].update(int8=None),
     "quantization.gate.drop_points\\['int8'\\] must be a number"),
    (lambda d: d.update(quantization=[]), "quantization must be an object"),
])
def test_a_bad_section_names_its_field(tmp_path, change, message):
    data = quantized_card().to_dict()
    change(data)
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(CardError, match=message):
        load_card(tmp_path)


def test_a_card_broken_in_place_is_not_written(tmp_path):
    card = quantized_card()
    save_card(card, tmp_path)
    before = (tmp_path / CARD_FILE).read_text()
    card.files[MODEL_FILE] = {"sha256": "ab"}
    with pytest.raises(CardError, match="files\\['model.tflite'\\] is missing the field 'bytes'"):
        save_card(card, tmp_path)
    assert (tmp_path / CARD_FILE).read_text() == before
    card.model = dataclasses.replace(card.model, cam=CamSpec("cam_inputs", "dense"))
    with pytest.raises(CardError, match="model.cam.head must be one of gap, gradient"):
        save_card(card, tmp_path)


def test_file_entries_hash_the_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"sightline" * 1000)
    entry = FileEntry.of(path)
    assert entry == FileEntry(hashlib.sha256(path.read_bytes()).hexdigest(), 9000)
    assert file_sha256(path) == entry.sha256


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
