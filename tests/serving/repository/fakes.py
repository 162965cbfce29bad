"""Fake artifacts and a fake model, so repository tests need neither TensorFlow nor LiteRT.

A fake ``model.tflite`` is JSON ({"classes": K, "size": [H, W]}); ``FakeModel`` opens it the
way ``TFLiteModel`` opens a real file, so a test changes the model by changing those bytes.
"""

import json
from pathlib import Path

import numpy as np

from serving.card import GAP_HEAD, CamSpec, FileEntry, InputSpec, ModelCard, ModelSpec, save_card

LABELS = ["cat", "dog"]


class FakeModel:
    def __init__(self, path: Path):
        spec = json.loads(Path(path).read_bytes())
        self.num_classes = spec["classes"]
        self.input_shape = (*spec["size"], 3)
        self.classify_batches: list[int] = []
        self.cam_calls = 0
        self.cam_needs_target = False  # a GAP head: its gradient is the head weights

    def classify(self, images: np.ndarray) -> np.ndarray:
        self.classify_batches.append(len(images))
        return np.full((len(images), self.num_classes), 1 / self.num_classes, np.float32)

    def cam_inputs(self, images, class_onehot=None):
        self.cam_calls += 1
        n = len(images)
        return self.classify(images), np.zeros((n, 2, 2, 4), np.float32), None


def model_bytes(classes: int = len(LABELS), size=(4, 4)) -> bytes:
    return json.dumps({"classes": classes, "size": list(size)}).encode()


def write_artifact(path: Path, *, model: bytes | None = None, labels=LABELS,
                   deployable: bool = True, head: bool = True, **card_fields) -> ModelCard:
    """A minimal artifact directory: model.tflite, card.json and (with ``head``) cam_head.npy."""
    path.mkdir(parents=True, exist_ok=True)
    model = model_bytes(len(labels)) if model is None else model
    (path / "model.tflite").write_bytes(model)
    files = {"model.tflite": FileEntry.of(path / "model.tflite")}
    cam = CamSpec(signature="cam_inputs", head=GAP_HEAD)
    if head:
        np.save(path / "cam_head.npy", np.ones((4, len(labels)), np.float32))
        files["cam_head.npy"] = FileEntry.of(path / "cam_head.npy")
        cam = CamSpec(signature="cam_inputs", head=GAP_HEAD, head_weights="cam_head.npy")
    card = ModelCard(labels=list(labels), input=InputSpec(height=4, width=4),
                     normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
                     model=ModelSpec(family="fake", cam=cam), dataset={"name": "fake"},
                     files=files, deployable=deployable, **card_fields)
    save_card(card, path)
    return card


def write_version(base: Path, name: str, version: int, **kwargs) -> Path:
    path = base / name / str(version)
    write_artifact(path, name=name, version=version, **kwargs)
    return path
