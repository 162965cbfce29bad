"""The model card: the one contract between training and serving.

A model directory holds the model file(s) and ``card.json``. Training writes the card (through
``training.export``, the one writer); serving reads it. This module is the schema for both, and
it imports nothing but the standard library and numpy so that the serving image needs no
TensorFlow. A card that breaks the schema fails at ``load``, never mid-request, and a card that
breaks it is never written (``save_card`` checks first).

Typed sections: ``model`` (``ModelSpec``, with ``cam``, a ``CamSpec``, once quantized),
``files`` (name -> ``FileEntry``) and ``quantization`` (``Quantization`` of ``Variant``s and a
``Gate``, or None before quantization). A section may be given as the plain mapping read from
JSON; the card turns it into its dataclass. The JSON layout is the one cards had when these
sections were plain dicts, so older cards load unchanged.

Reference statistics (``ReferenceStats``) describe the validation split as the trained model saw
it; drift monitoring compares live traffic against them using the same histogram edges, computed
by the functions in ``serving.reference_stats``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CARD_FILE",
    "GAP_HEAD",
    "GRADIENT_HEAD",
    "HEADS",
    "MODEL_FILE",
    "SCHEMA_VERSION",
    "CamSpec",
    "CardError",
    "FileEntry",
    "Gate",
    "Histogram",
    "InputSpec",
    "ModelCard",
    "ModelSpec",
    "Quantization",
    "ReferenceStats",
    "Variant",
    "file_sha256",
    "load_card",
    "save_card",
]

CARD_FILE = "card.json"
MODEL_FILE = "model.tflite"  # the model every model directory serves
SCHEMA_VERSION = 1

# The head vocabulary (``model.head`` and ``model.cam.head``) names how Grad-CAM gets the gradient
# of a logit at the feature map, which is what serving has to know:
# - "gap": features -> global average pool -> affine layers -> logits, so the gradient is
#   W_eff[:, c] / (h * w) everywhere; serving reads W_eff from the card's ``head_weights``.
# - "gradient": any other head; the model's ``cam_inputs`` signature computes it in-graph.
# Older cards wrote "dense" for the second kind in ``model.head``: a layer type, and one that every
# head ends in (a GAP head too), so the name could not tell them apart. It is read as "gradient".
HEADS = ("gap", "gradient")
GAP_HEAD, GRADIENT_HEAD = HEADS
_OLD_HEADS = {"dense": GRADIENT_HEAD}


class CardError(ValueError):
    """The card is missing, unreadable, or breaks the schema; the message names the field."""


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks: what ``files`` entries record."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


# --- typed sections --------------------------------------------------------------------------
# Each section checks itself with ``check(where)``, ``where`` being its path in the card
# ("quantization.variants['int8']"), so that an error names the field.


@dataclass(frozen=True)
class FileEntry:
    """One ``files`` entry: a file of the model directory as training wrote it."""

    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: str | Path) -> FileEntry:
        return cls(sha256=file_sha256(path), bytes=Path(path).stat().st_size)

    def check(self, where: str) -> None:
        _expect(f"{where}.sha256", self.sha256, str, "a string")
        _expect(f"{where}.bytes", self.bytes, int, "an integer")


@dataclass(frozen=True)
class CamSpec:
    """``model.cam``: how the TFLite model gives Grad-CAM its inputs (written by quantization)."""

    signature: str  # the TFLite signature: "cam_inputs"
    head: str  # one of HEADS
    head_weights: str | None = None  # the (C, K) W_eff file of a "gap" head: "cam_head.npy"

    def check(self, where: str) -> None:
        _expect(f"{where}.signature", self.signature, str, "a string")
        _expect_head(f"{where}.head", self.head)
        _expect(f"{where}.head_weights", self.head_weights, (str, type(None)),
                "a file name or null")


@dataclass(frozen=True)
class ModelSpec:
    """``model``: what the network is. Only what a card actually has is written (a card before
    quantization has no ``cam``)."""

    family: str | None = None  # the training.models family: "airbench", "basic_cnn", ...
    feature_layer: str | None = None  # the feature map Grad-CAM explains
    logits_layer: str | None = None
    head: str | None = None  # one of HEADS
    parameters: int | None = None
    cam: CamSpec | None = None

    def check(self, where: str) -> None:
        for name in ("family", "feature_layer", "logits_layer"):
            _expect(f"{where}.{name}", getattr(self, name), (str, type(None)), "a string")
        if self.head is not None:
            _expect_head(f"{where}.head", self.head)
        _expect(f"{where}.parameters", self.parameters, (int, type(None)), "an integer")
        _expect(f"{where}.cam", self.cam, (CamSpec, type(None)), "an object")
        if self.cam is not None:
            self.cam.check(f"{where}.cam")
            if self.head is not None and self.head != self.cam.head:
                raise CardError(f"{where}.head {self.head!r} disagrees with {where}.cam.head "
                                f"{self.cam.head!r}")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.cam is not None:
            data["cam"] = dataclasses.asdict(self.cam)
        return {key: value for key, value in data.items() if value is not None}


@dataclass(frozen=True)
class Variant:
    """One quantized model file, as LiteRT ran it on the validation split."""

    accuracy: float
    agreement: float  # top-1 agreement with the Keras model
    max_abs_probability_error: float
    latency_ms_batch1: float
    sha256: str
    bytes: int
    file: str  # MODEL_FILE for the primary mode, "model.<mode>.tflite" for the others

    def check(self, where: str) -> None:
        for name in ("accuracy", "agreement", "max_abs_probability_error", "latency_ms_batch1"):
            _expect(f"{where}.{name}", getattr(self, name), (int, float), "a number")
        FileEntry(self.sha256, self.bytes).check(where)
        _expect(f"{where}.file", self.file, str, "a file name")


@dataclass(frozen=True)
class Gate:
    """The accuracy gate: int8 may lose at most ``max_drop_points`` points of top-1."""

    max_drop_points: float
    drop_points: dict[str, float]  # mode -> points of top-1 lost against Keras
    passed: bool

    def check(self, where: str) -> None:
        _expect(f"{where}.max_drop_points", self.max_drop_points, (int, float), "a number")
        _expect(f"{where}.drop_points", self.drop_points, Mapping, "an object")
        for mode, drop in self.drop_points.items():
            _expect(f"{where}.drop_points[{mode!r}]", drop, (int, float), "a number")
        _expect(f"{where}.passed", self.passed, bool, "true or false")


@dataclass(frozen=True)
class Quantization:
    """``quantization``: the TFLite variants written and the gate they went through."""

    keras_accuracy: float
    primary: str  # the mode whose file is MODEL_FILE, the one serving loads
    variants: dict[str, Variant]  # mode -> variant, the primary first
    gate: Gate
    representative_size: int  # calibration images

    def check(self, where: str) -> None:
        _expect(f"{where}.keras_accuracy", self.keras_accuracy, (int, float), "a number")
        _expect(f"{where}.primary", self.primary, str, "a mode name")
        _expect(f"{where}.variants", self.variants, Mapping, "an object")
        for mode, variant in self.variants.items():
            _expect(f"{where}.variants[{mode!r}]", variant, Variant, "an object")
            variant.check(f"{where}.variants[{mode!r}]")
        if self.primary not in self.variants:
            raise CardError(f"{where}.primary {self.primary!r} is not one of its variants "
                            f"{sorted(self.variants)}")
        _expect(f"{where}.gate", self.gate, Gate, "an object")
        self.gate.check(f"{where}.gate")
        _expect(f"{where}.representative_size", self.representative_size, int, "an integer")


@dataclass
class ModelCard:
    labels: list[str]
    input: InputSpec
    normalization: dict[str, list[float]]  # {"mean": [..], "std": [..]} per channel, baked in
    model: ModelSpec  # or its JSON mapping
    dataset: dict[str, Any]  # name, source, fingerprint, split sizes, class counts
    training: dict[str, Any] = field(default_factory=dict)  # epochs, precision, seconds, git
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics, evaluation
    reference: ReferenceStats | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)  # name -> entry (or its mapping)
    quantization: Quantization | None = None  # None (``{}`` on disk) until quantized
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
        self.validate()

    def validate(self) -> None:
        """Turn sections given as JSON mappings into their dataclasses, then raise CardError
        naming the first field that breaks the schema. Construction and ``save_card`` call it,
        so a card changed in place is checked before it is written."""
        if len(self.labels) < 2:
            raise CardError(f"card needs at least 2 labels; got {self.labels!r}")
        if len(set(self.labels)) != len(self.labels):
            raise CardError(f"card labels must be unique; got {self.labels!r}")
        if self.reference is not None and len(self.reference.class_prior) != len(self.labels):
            raise CardError(
                f"reference.class_prior has {len(self.reference.class_prior)} entries for "
                f"{len(self.labels)} labels"
            )
        self.model = _model_spec(self.model, "model")
        self.model.check("model")
        if not isinstance(self.files, Mapping):
            raise CardError(f"files must be an object; got {_short(self.files)}")
        self.files = {name: _section(FileEntry, entry, f"files[{name!r}]")
                      for name, entry in self.files.items()}
        for name, entry in self.files.items():
            entry.check(f"files[{name!r}]")
        if isinstance(self.quantization, Mapping) and not self.quantization:
            self.quantization = None  # {} on disk: not quantized yet
        if self.quantization is not None:
            self.quantization = _quantization(self.quantization, "quantization")
            self.quantization.check("quantization")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def cam(self) -> CamSpec | None:
        """How Grad-CAM gets its inputs from the model file; None before quantization."""
        return self.model.cam

    @property
    def served_files(self) -> list[str]:
        """The files a model directory serves, each checked against ``files``: MODEL_FILE and
        the CAM head weights when the card names them."""
        cam = self.model.cam
        return [MODEL_FILE, cam.head_weights] if cam and cam.head_weights else [MODEL_FILE]

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``card.json`` (the one cards had before the typed sections)."""
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        data["quantization"] = ({} if self.quantization is None
                                else dataclasses.asdict(self.quantization))
        return data

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
    """Write atomically (temp file + rename) so a reader never sees half a card. A card that
    breaks the schema raises CardError and nothing is written."""
    card.validate()
    text = json.dumps(card.to_dict(), indent=2, sort_keys=False) + "\n"
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / CARD_FILE
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".card-", suffix=".json")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return path


# --- reading sections from JSON ----------------------------------------------------------------


def _expect(where: str, value: Any, kinds, what: str) -> None:
    """CardError unless ``value`` is one of ``kinds`` (a bool is not a number here)."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CardError(f"{where} must be {what}; got {_short(value)}")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expect_head(where: str, head: Any) -> None:
    if head not in HEADS:
        raise CardError(f"{where} must be one of {', '.join(HEADS)}; got {_short(head)}")


def _fields(cls, data: Any, where: str) -> dict[str, Any]:
    """The mapping ``data`` as keyword arguments of ``cls``: no unknown or missing field."""
    if not isinstance(data, Mapping):
        raise CardError(f"{where} must be an object; got {_short(data)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise CardError(f"{where} has an unknown field {unknown[0]!r}; known: {', '.join(names)}")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise CardError(f"{where} is missing the field {missing[0]!r}")
    return dict(data)


def _section(cls, data: Any, where: str):
    return data if isinstance(data, cls) else cls(**_fields(cls, data, where))


def _old_head(head: Any) -> Any:
    """An older card's spelling of a head in today's vocabulary (HEADS)."""
    return _OLD_HEADS.get(head, head) if isinstance(head, str) else head


def _model_spec(data: Any, where: str) -> ModelSpec:
    if isinstance(data, ModelSpec):
        return data
    values = _fields(ModelSpec, data, where)
    values["head"] = _old_head(values.get("head"))
    if values["head"] is not None:
        _expect_head(f"{where}.head", values["head"])
    if values.get("cam") is not None and not isinstance(values["cam"], CamSpec):
        cam = _fields(CamSpec, values["cam"], f"{where}.cam")
        cam["head"] = _old_head(cam["head"])
        values["cam"] = CamSpec(**cam)
    if values.get("cam") is not None:
        if values["head"] is not None:
            # Older training wrote model.head by a looser rule than the export (any global pool
            # made "gap", so a GAP -> hard-swish Dense head read "gap"); the export's is right.
            values["head"] = values["cam"].head
    return ModelSpec(**values)


def _quantization(data: Any, where: str) -> Quantization:
    if isinstance(data, Quantization):
        return data
    values = _fields(Quantization, data, where)
    if not isinstance(values["variants"], Mapping):
        raise CardError(f"{where}.variants must be an object; got {_short(values['variants'])}")
    values["variants"] = {mode: _section(Variant, variant, f"{where}.variants[{mode!r}]")
                          for mode, variant in values["variants"].items()}
    values["gate"] = _section(Gate, values["gate"], f"{where}.gate")
    return Quantization(**values)
