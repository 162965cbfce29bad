"""One typed experiment config: every default here, with the reason for it.

A run is described by a YAML file under ``training/configs/`` plus ``--set key=value``
overrides (dotted keys reach into sections: ``--set optim.learning_rate=0.01``). Unknown keys
and values of the wrong type are errors that name the key and the value, raised before any
TensorFlow import so that a typo costs a second, not a minute. The resolved config is written
next to the trained model.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from training.errors import UserError

__all__ = [
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "load_config",
]

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16", "auto")
LOSSES = ("crossentropy", "weighted_crossentropy", "focal")
OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle", "plateau")


@dataclass
class DataConfig:
    name: str = "shapes"  # shapes is built in and deterministic: the demo and tests need no files
    path: str = ""  # cifar10: batch directory; folder: directory or .tar/.tar.gz
    image_size: int = 32  # square side in pixels; images are resized to it (32-224)
    num_images: int = 6000  # shapes only: how many to generate (1000 per class by default)
    validation_fraction: float = 0.1  # stratified hold-out; 0.1 of CIFAR-10's 50k is 5,000
    imbalance_warning_ratio: float = 3.0  # warn when largest class / smallest class exceeds it
    cache: bool = True  # cache decoded images in memory inside tf.data


@dataclass
class AugmentConfig:
    """Training-time augmentation; every one is off at evaluation."""

    flip: bool = True  # horizontal mirror: labels of natural images are mirror-invariant
    alternate_flip: bool = False  # airbench: each image mirrored every other epoch, not at random
    rotation: float = 15.0  # degrees, +/-; 0 turns it off
    translation: float = 0.1  # fraction of the side, +/-
    zoom: float = 0.2  # zoom factor in [1 - zoom, 1 + zoom], i.e. 0.8-1.2
    brightness: float = 0.2  # +/- fraction of the value range
    contrast: float = 0.2  # contrast factor in [1 - c, 1 + c]
    saturation: float = 0.2  # saturation factor in [1 - s, 1 + s]
    hue: float = 0.05  # +/- fraction of the hue circle
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing; 0 is off (Zhang et al. 2018)
    cutmix_alpha: float = 0.0  # Beta(alpha, alpha) box area; 0 is off (Yun et al. 2019)
    fill_mode: str = "reflect"  # how geometric transforms fill the border
    interpolation: str = "bilinear"  # rotation and zoom; translations are whole pixels anyway


@dataclass
class ModelConfig:
    name: str = "basic_cnn"  # the seed's network; see training/models for the registry
    width: int = 32  # base number of filters; families scale it per stage
    depth: int = 3  # resnet: residual blocks per stage
    squeeze_excite: bool = False  # resnet: add SE blocks (Hu et al. 2018)
    dropout: float = 0.5  # after dense layers, as in the seed
    l2: float = 1e-3  # kernel L2 penalty, the seed's value
    pool: str = "avg"  # airbench's global pool before the logits: avg, or max as airbench has it
    logit_scale: float = 1 / 9  # airbench: pooled features are scaled by this before the logits
    bias_lr_scale: float = 1.0  # airbench: BatchNorm biases learn this many times faster (64)
    whiten_bias_epochs: int = 0  # airbench: the whitening conv's bias trains this long (3)
    init: str = "glorot"  # airbench: weight start, Keras' Glorot uniform or PyTorch's ("torch")


@dataclass
class LossConfig:
    name: str = "crossentropy"
    label_smoothing: float = 0.0  # airbench uses 0.2 on CIFAR-10
    focal_gamma: float = 2.0  # focal loss focusing parameter (Lin et al. 2017)
    focal_alpha: float = 0.25  # focal loss balance parameter


@dataclass
class OptimConfig:
    name: str = "adam"
    learning_rate: float = 1e-3  # Adam's usual default, the seed's value
    momentum: float = 0.9  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = 1e-4  # adamw only (decoupled); sgd/adam use model.l2 instead
    schedule: str = "constant"
    warmup_epochs: float = 0.0  # cosine and onecycle: linear warm-up length
    onecycle_start: float = 0.04  # onecycle starts at this fraction of the peak (PyTorch's 1/25)
    plateau_factor: float = 0.5  # plateau: multiply the rate by this ...
    plateau_patience: int = 5  # ... after this many epochs without val_loss improvement
    ema: bool = False  # keep an exponential moving average of weights and evaluate with it
    ema_momentum: float = 0.99


@dataclass
class EvalConfig:
    tta_flip: bool = False  # average predictions over the image and its mirror
    tta_translate: bool = False  # and over it moved a pixel either way (airbench's multi-crop)


@dataclass
class Config:
    name: str = "run"  # artifact directory name under output_dir
    seed: int = 42  # seeds python, numpy and TensorFlow: runs repeat
    epochs: int = 10
    batch_size: int = 128
    output_dir: str = "artifacts"
    # tf.distribute: default | mirrored | multiworker (reads TF_CONFIG, or builds it in a
    # Kubernetes Indexed Job: training/cluster.py); only worker 0 writes the artifact
    strategy: str = "default"
    precision: str = "float32"  # or mixed_bfloat16 (2-4x faster with AMX), or auto (by CPU flags)
    early_stopping_patience: int = 10  # epochs without val_loss improvement; 0 is off
    tensorboard: bool = True  # scalars, weight histograms and the graph under <artifact>/logs
    time_limit_minutes: float = 0.0  # stop training after this much wall time; 0 is no limit
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "strategy": STRATEGIES,
    "precision": PRECISIONS,
    "loss.name": LOSSES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "augment.fill_mode": ("reflect", "wrap", "constant", "nearest"),
    "augment.interpolation": ("bilinear", "nearest"),
    "model.pool": ("avg", "max"),
    "model.init": ("glorot", "torch"),
}
_POSITIVE = ("epochs", "batch_size", "data.image_size", "data.num_images", "model.width",
             "model.logit_scale", "model.bias_lr_scale")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults, then the YAML file, then each ``key=value`` override, then validation."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            first_line = str(exc).splitlines()[0]
            raise UserError(f"config file {path} is not valid YAML: {first_line}") from None
        if not isinstance(loaded, dict):
            raise UserError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        _apply_mapping(config, loaded, prefix="")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} must look like key=value")
        _set(config, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    _validate(config)
    return config


def _apply_mapping(section, mapping: dict, prefix: str) -> None:
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            child = _field_value(section, key, dotted)
            if not dataclasses.is_dataclass(child):
                raise UserError(f"config key {dotted!r} is a value, not a section")
            _apply_mapping(child, value, prefix=f"{dotted}.")
        else:
            _set_leaf(section, key, value, dotted)


def _set(config: Config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    section = config
    for depth, name in enumerate(parents):
        section = _field_value(section, name, ".".join(parents[: depth + 1]))
        if not dataclasses.is_dataclass(section):
            raise UserError(f"config key {dotted!r}: {'.'.join(parents[: depth + 1])} is a value")
    _set_leaf(section, leaf, value, dotted)


def _field_value(section, name: str, dotted: str):
    known = {f.name for f in dataclasses.fields(section)}
    if name not in known:
        raise UserError(f"unknown config key {dotted!r}; known here: {', '.join(sorted(known))}")
    return getattr(section, name)


def _set_leaf(section, name: str, value, dotted: str) -> None:
    current = _field_value(section, name, dotted)
    if dataclasses.is_dataclass(current):
        raise UserError(f"config key {dotted!r} is a section; set one of its fields")
    hints = typing.get_type_hints(type(section))
    setattr(section, name, _coerce(value, hints[name], dotted))


def _coerce(value, expected, dotted: str):
    """Accept YAML's natural spelling of a value (an int where a float is due); reject the rest."""
    if isinstance(expected, types.UnionType):
        expected = next(t for t in typing.get_args(expected) if t is not type(None))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise UserError(
            f"config key {dotted!r} must be {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _validate(config: Config) -> None:
    # The registries import this module, so they are imported here, not at the top.
    from training.data import DATASETS
    from training.models import MODELS

    choices = {**_CHOICES, "data.name": DATASETS, "model.name": MODELS}
    for dotted, allowed in choices.items():
        value = _get(config, dotted)
        if value not in allowed:
            raise UserError(
                f"config key {dotted!r} must be one of {', '.join(allowed)}; got {value!r}"
            )
    for dotted in _POSITIVE:
        if _get(config, dotted) <= 0:
            raise UserError(f"config key {dotted!r} must be > 0; got {_get(config, dotted)!r}")
    size = config.data.image_size
    if not 16 <= size <= 512 or (config.data.name == "shapes" and size > 224):
        limit = 224 if config.data.name == "shapes" else 512
        raise UserError(f"data.image_size must be within 16-{limit} pixels; got {size}")
    if not 0.0 < config.data.validation_fraction < 1.0:
        fraction = config.data.validation_fraction
        raise UserError(f"data.validation_fraction must be between 0 and 1; got {fraction}")
    if config.data.name in ("cifar10", "folder") and not config.data.path:
        raise UserError(f"dataset {config.data.name!r} needs data.path (--set data.path=...)")
    for dotted in ("model.dropout", "loss.label_smoothing", "augment.translation", "augment.zoom",
                   "optim.onecycle_start"):
        value = _get(config, dotted)
        if not 0.0 <= value < 1.0:
            raise UserError(f"config key {dotted!r} must be in [0, 1); got {value!r}")
    for dotted in ("augment.mixup_alpha", "augment.cutmix_alpha", "augment.rotation",
                   "model.l2", "optim.weight_decay", "optim.warmup_epochs", "time_limit_minutes"):
        if _get(config, dotted) < 0:
            raise UserError(f"config key {dotted!r} must be >= 0; got {_get(config, dotted)!r}")
    if config.optim.learning_rate <= 0:
        raise UserError(f"optim.learning_rate must be > 0; got {config.optim.learning_rate}")


def _get(config: Config, dotted: str):
    value = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value
