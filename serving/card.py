"""The model card: the one contract between training and serving.

A model directory holds the model file(s) and ``card.json``. Training writes the card (through
``training.export``, the one writer); serving reads it. This module is the schema for both, and
it imports nothing but the standard library and numpy so that the serving image needs no
TensorFlow. A card that breaks the schema fails at ``load``, never mid-request.

Reference statistics (``ReferenceStats``) describe the validation split as the trained model saw
it; drift monitoring compares live traffic against them using the same histogram edges, computed
by the functions in ``serving.reference_stats``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FILE",
    "MODEL_FILE",
    "SCHEMA_VERSION",
    "CardError",
    "Histogram",
    "InputSpec",
    "ModelCard",
    "ReferenceStats",
    "load_card",
    "save_card",
]

CARD_FILE = "card.json"
MODEL_FILE = "model.tflite"  # the model every model directory serves
SCHEMA_VERSION = 1


class CardError(ValueError):
    """The card is missing, unreadable, or breaks the schema; the message names the field."""


@dataclass
class InputSpec:
    """What the model takes: raw RGB pixels; standardisation is inside the model."""

    height: int
    width: int
    channels: int = 3
    dtype: str = "float32"  # the Keras model's input; a TFLite variant may take uint8
    value_range: tuple[float, float] = (0.0, 255.0)
    resize: str = "pillow-bilinear"  # how images of other sizes are brought to height x width


@dataclass
class Histogram:
    edges: list[float]  # len(counts) + 1 ascending bin edges
    counts: list[int]

    def __post_init__(self) -> None:
        if len(self.edges) != len(self.counts) + 1:
            raise CardError(
                f"histogram needs len(edges) == len(counts) + 1; got {len(self.edges)} edges "
                f"and {len(self.counts)} counts"
            )


@dataclass
class ReferenceStats:
    """Statistics of the validation split, the baseline for drift detection."""

    class_prior: list[float]  # share of validation images predicted as each class
    confidence: Histogram  # top-1 probability
    brightness: Histogram  # mean luma (0-255) per input image


@dataclass
class ModelCard:
    labels: list[str]
    input: InputSpec
    normalization: dict[str, list[float]]  # {"mean": [..], "std": [..]} per channel, baked in
    model: dict[str, Any]  # family, feature_layer, parameters, ...
    dataset: dict[str, Any]  # name, source, fingerprint, split sizes, class counts
    training: dict[str, Any] = field(default_factory=dict)  # epochs, precision, seconds, git
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics, evaluation
    reference: ReferenceStats | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes, ...}
    quantization: dict[str, Any] = field(default_factory=dict)
    deployable: bool = False  # set only by a quantization that passed its accuracy gate
    name: str = "model"
    version: int | None = None  # assigned when deployed into a model repository
    created_at: str = ""
    git_commit: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise CardError(
                f"card schema_version {self.schema_version} is not supported "
                f"(this Sightline reads {SCHEMA_VERSION})"
            )
        if len(self.labels) < 2:
            raise CardError(f"card needs at least 2 labels; got {self.labels!r}")
        if len(set(self.labels)) != len(self.labels):
            raise CardError(f"card labels must be unique; got {self.labels!r}")
        if self.reference is not None and len(self.reference.class_prior) != len(self.labels):
            raise CardError(
                f"reference.class_prior has {len(self.reference.class_prior)} entries for "
                f"{len(self.labels)} labels"
            )

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        if not isinstance(data, dict):
            raise CardError(f"card must be a JSON object; got {type(data).__name__}")
        data = dict(data)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise CardError(f"card is missing the field {missing[0]!r}")
        try:
            data["input"] = InputSpec(**data["input"])
            data["input"].value_range = tuple(data["input"].value_range)
            if data.get("reference") is not None:
                ref = data["reference"]
                data["reference"] = ReferenceStats(
                    class_prior=ref["class_prior"],
                    confidence=Histogram(**ref["confidence"]),
                    brightness=Histogram(**ref["brightness"]),
                )
            return cls(**data)
        except KeyError as exc:
            raise CardError(f"card is missing the field {exc.args[0]!r}") from None
        except TypeError as exc:  # unknown or missing dataclass arguments
            raise CardError(f"card does not match the schema: {exc}") from None


def load_card(model_dir: str | Path) -> ModelCard:
    path = Path(model_dir) / CARD_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CardError(f"no {CARD_FILE} in {model_dir}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"cannot read {path}: {exc}") from None
    return ModelCard.from_dict(data)


def save_card(card: ModelCard, model_dir: str | Path) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a card."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CARD_FILE
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".card-", suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
    with os.fdopen(fd, "w") as handle:
        json.dump(card.to_dict(), handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)
    return path
