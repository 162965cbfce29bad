"""Experiments: what an A/B experiment is, and the file that defines them.

What it is: ``Experiment`` (the name clients send to reach it, the model it runs on, baseline
and candidate ``VariantSpec``s, a ``decide.ExperimentConfig``, the metadata key that keeps a
caller on one arm, the assignment salt, shadow settings); ``parse_experiments`` and
``load_experiments`` build them from the file form (YAML; JSON for a ``.json`` file)::

    experiments:
      - name: pets-next                 # what clients send as the model name
        model: pets
        baseline: {label: stable}       # or {version: 3}
        candidate: {version: 4}
        mode: canary                    # split | shadow | canary
        weights: {baseline: 0.9, candidate: 0.1}     # split only
        steps: [{share: 0.05, min_samples: 1000, min_seconds: 300}, {share: 0.5}]  # canary only
        sticky_key: x-user-id           # absent: the request id
        salt: pets-next-1               # absent: the name
        guardrails: {min_feedback: 500, alpha: 0.05}  # any of decide.Guardrails' fields
        srm_threshold: 0.001
        shadow: {queue_size: 64, explain_sample: 0.05}
        decided_by: server              # or controller: `sightline-ab controller` decides
                                        # on the fleet's summed counts; servers follow

``to_data`` is the file form back, defaults spelled out; parsing it gives an equal Experiment.

Who calls it: the server at start and on its polling thread (``ExperimentFile.poll``); admin
RPCs, to show what runs (``to_data``); ``state``, to fingerprint a definition.

What it guarantees:
- A definition that loads is whole: names match ``NAME_PATTERN`` (not starting with "." or "_",
  which the repository never serves), one experiment per model, no name that is another
  experiment's name or model, baseline differs from candidate, and ``decide``'s checks passed.
- Every error is an ``ExperimentError`` whose message starts with the path of the bad field
  (``experiments[1].candidate.version must be a positive integer; got 'x'``); an unknown key is
  named with the known ones; file content is repeated only clipped.
- ``ExperimentFile.current`` is replaced whole, never mutated, so readers on other threads see
  one definition or the next. A missing file is no experiments; a bad one changes nothing and
  is logged once per distinct content (logger ``sightline.routing``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

import yaml

from serving.errors import SHOWN_CHARS, shown
from serving.routing.decide import CanaryStep, ExperimentConfig, Guardrails, Mode

__all__ = ["DECIDERS", "NAME_PATTERN", "Experiment", "ExperimentError", "ExperimentFile",
           "VariantSpec", "load_experiments", "parse_experiments", "to_data"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DECIDERS = ("server", "controller")  # who runs decide: each server, or the fleet's controller
STICKY_KEY_PATTERN = re.compile(r"[a-z0-9_.-]+")  # gRPC's rule for a metadata key
MAX_TEXT_CHARS = 128  # a label or a salt
MAX_SHADOW_QUEUE = 4096
_EXPERIMENT_KEYS = ("name", "model", "baseline", "candidate", "mode", "weights", "steps",
                    "sticky_key", "salt", "guardrails", "srm_threshold", "shadow", "decided_by")
_REQUIRED = ("name", "model", "baseline", "candidate", "mode")
_FILE_KEYS = {"shadow_queue_size": "shadow.queue_size", "explain_sample": "shadow.explain_sample"}

logger = logging.getLogger("sightline.routing")


class ExperimentError(ValueError):
    """A bad definition. ``field`` is the path to the bad value; the message starts with it."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _got(value: object) -> str:
    if isinstance(value, str | bytes | list | tuple):
        return shown(value)
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}..."


def _is_integer(value: object) -> bool:
    return type(value) is int  # bool is an int to Python, never to a config file


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT_CHARS


@dataclass(frozen=True)
class VariantSpec:
    """One arm: a version, or a label resolved against ``labels.json`` when a request comes."""

    version: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if (self.version is None) == (self.label is None):
            raise ExperimentError("", "needs exactly one of version and label; got "
                                      f"{'neither' if self.version is None else 'both'}")
        if self.version is not None and not (_is_integer(self.version) and self.version > 0):
            raise ExperimentError("version", f"must be a positive integer; got "
                                             f"{_got(self.version)}")
        if self.label is not None and not _is_text(self.label):
            raise ExperimentError("label", f"must be a string of 1 to {MAX_TEXT_CHARS} "
                                           f"characters; got {_got(self.label)}")

    def __str__(self) -> str:
        return f"version {self.version}" if self.label is None else f"label {shown(self.label)}"


@dataclass(frozen=True)
class Experiment:
    name: str  # what a client sends as the model name (OIP) to reach the experiment
    model: str
    baseline: VariantSpec
    candidate: VariantSpec
    config: ExperimentConfig
    sticky_key: str | None = None  # a gRPC metadata key; None: the request id
    salt: str | None = None  # None: the name. A new salt reshuffles every caller's arm
    shadow_queue_size: int = 64  # mirrored requests waiting for the candidate; more are dropped
    explain_sample: float = 0.05  # fraction of mirrored requests also explained
    # "controller": one `sightline-ab controller` decides on counts summed over the fleet and
    # writes the state file; each server adopts it instead of deciding on its own share.
    decided_by: str = "server"

    def __post_init__(self) -> None:
        if self.decided_by not in DECIDERS:
            raise ExperimentError("decided_by", f"must be one of {', '.join(DECIDERS)}; got "
                                                f"{_got(self.decided_by)}")
        for field in ("name", "model"):
            value = getattr(self, field)
            if not (isinstance(value, str) and NAME_PATTERN.fullmatch(value)):
                raise ExperimentError(field, f"must match {NAME_PATTERN.pattern}; got "
                                             f"{_got(value)}")
        if self.name == self.model:
            raise ExperimentError("name", f"must differ from model {shown(self.model)}: it is "
                                          "the name clients send to reach the experiment")
        if self.baseline == self.candidate:
            raise ExperimentError("candidate", f"must differ from the baseline; both are "
                                               f"{self.baseline}")
        key = self.sticky_key
        if key is not None and not (isinstance(key, str) and STICKY_KEY_PATTERN.fullmatch(key)
                                    and not key.startswith("grpc-") and not key.endswith("-bin")):
            raise ExperimentError("sticky_key", "must be a lowercase gRPC metadata key "
                                  "([a-z0-9_.-]+), not grpc-* (reserved) nor *-bin (binary); "
                                  f"got {_got(key)}")
        if self.salt is None:
            object.__setattr__(self, "salt", self.name)
        elif not _is_text(self.salt):
            raise ExperimentError("salt", f"must be a string of 1 to {MAX_TEXT_CHARS} "
                                          f"characters; got {_got(self.salt)}")
        size = self.shadow_queue_size
        if not (_is_integer(size) and 1 <= size <= MAX_SHADOW_QUEUE):
            raise ExperimentError("shadow_queue_size", f"must be an integer in "
                                                       f"1..{MAX_SHADOW_QUEUE}; got {_got(size)}")
        sample = self.explain_sample
        if not (_is_number(sample) and 0 <= sample <= 1):
            raise ExperimentError("explain_sample", f"must be a number in [0, 1]; got "
                                                    f"{_got(sample)}")
        object.__setattr__(self, "explain_sample", float(sample))


def _mapping(value: object, path: str, known: tuple[str, ...], required: tuple[str, ...] = ()
             ) -> dict:
    if not isinstance(value, dict):
        raise ExperimentError(path, f"must be a mapping; got {_got(value)}")
    for key in value:
        if key not in known:
            raise ExperimentError(path, f"has unknown key {_got(key)}; known: "
                                        f"{', '.join(known)}")
    for key in required:
        if key not in value:
            raise ExperimentError(f"{path}.{key}", "is required")
    return value


def _number(value: object, path: str, integer: bool) -> int | float:
    if integer and not _is_integer(value):
        raise ExperimentError(path, f"must be an integer; got {_got(value)}")
    if not _is_number(value):
        raise ExperimentError(path, f"must be a finite number; got {_got(value)}")
    return value if integer else float(value)


def _numbers(cls: type, value: object, path: str):
    """``cls`` (a dataclass of numbers in ``decide``) from a mapping of its fields, each one
    type-checked first; its own ValueError becomes an ExperimentError at ``path``."""
    data = _mapping(value, path, tuple(f.name for f in fields(cls)),
                    tuple(f.name for f in fields(cls) if f.default is MISSING))
    integer = {f.name: f.type in ("int", int) for f in fields(cls)}
    values = {key: _number(item, f"{path}.{key}", integer[key]) for key, item in data.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise ExperimentError(path, f"is invalid: {exc}") from None


def _config(data: dict, where: str) -> ExperimentConfig:
    mode, modes = data["mode"], tuple(m.value for m in Mode)
    if mode not in modes:
        raise ExperimentError(f"{where}.mode", f"must be one of {', '.join(modes)}; got "
                                               f"{_got(mode)}")
    mode = Mode(mode)
    for key, only in (("weights", Mode.SPLIT), ("steps", Mode.CANARY)):
        if key in data and mode is not only:
            raise ExperimentError(f"{where}.{key}", f"applies to mode {only} only; got {mode}")
    settings = {}
    if "weights" in data:
        arms = ("baseline", "candidate")
        weights = _mapping(data["weights"], f"{where}.weights", arms, arms)
        settings["weights"] = tuple(_number(weights[arm], f"{where}.weights.{arm}", False)
                                    for arm in arms)
    if mode is Mode.CANARY:
        steps = data.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ExperimentError(f"{where}.steps", f"must be a non-empty list for mode "
                                                    f"canary; got {_got(steps)}")
        settings["steps"] = tuple(_numbers(CanaryStep, step, f"{where}.steps[{i}]")
                                  for i, step in enumerate(steps))
    if "guardrails" in data:
        settings["guardrails"] = _numbers(Guardrails, data["guardrails"], f"{where}.guardrails")
    try:
        config = ExperimentConfig(mode, **settings)
    except ValueError as exc:  # split: its weights; canary: its steps' shares
        key = "weights" if mode is Mode.SPLIT else "steps"
        raise ExperimentError(f"{where}.{key}", f"is invalid: {exc}") from None
    if "srm_threshold" in data:
        threshold = _number(data["srm_threshold"], f"{where}.srm_threshold", False)
        try:
            config = replace(config, srm_threshold=threshold)
        except ValueError as exc:
            raise ExperimentError(f"{where}.srm_threshold", f"is invalid: {exc}") from None
    return config


def _variant(value: object, path: str) -> VariantSpec:
    spec = _mapping(value, path, ("version", "label"))
    try:
        return VariantSpec(spec.get("version"), spec.get("label"))
    except ExperimentError as exc:
        raise ExperimentError(f"{path}.{exc.field}" if exc.field else path, exc.problem) from None


def _experiment(value: object, where: str) -> Experiment:
    data = _mapping(value, where, _EXPERIMENT_KEYS, _REQUIRED)
    options = {key: data[key] for key in ("sticky_key", "salt", "decided_by") if key in data}
    shadow = _mapping(data.get("shadow", {}), f"{where}.shadow", ("queue_size", "explain_sample"))
    options.update({"shadow_queue_size" if key == "queue_size" else key: item
                    for key, item in shadow.items()})
    baseline = _variant(data["baseline"], f"{where}.baseline")
    candidate = _variant(data["candidate"], f"{where}.candidate")
    config = _config(data, where)
    try:
        return Experiment(data["name"], data["model"], baseline, candidate, config, **options)
    except ExperimentError as exc:
        raise ExperimentError(f"{where}.{_FILE_KEYS.get(exc.field, exc.field)}",
                              exc.problem) from None


def parse_experiments(data: object) -> dict[str, Experiment]:
    """The file form (already decoded) as {name: Experiment}, in file order."""
    if data is None:
        return {}
    entries = _mapping(data, "top level", ("experiments",)).get("experiments") or []
    if not isinstance(entries, list):
        raise ExperimentError("experiments", f"must be a list; got {_got(entries)}")
    experiments: dict[str, Experiment] = {}
    claimed: dict[str, str] = {}  # each name and model taken so far -> by what
    for i, entry in enumerate(entries):
        where = f"experiments[{i}]"
        experiment = _experiment(entry, where)
        for field in ("name", "model"):  # one name reaches one thing; one model, one experiment
            value = getattr(experiment, field)
            if value in claimed:
                raise ExperimentError(f"{where}.{field}", f"{shown(value)} is already "
                                      f"{claimed[value]}: a name reaches one experiment or "
                                      "model, and a model has one experiment")
        claimed[experiment.name] = f"the name of {where}"
        claimed[experiment.model] = f"the model of {where}"
        experiments[experiment.name] = experiment
    return experiments


def _decode(path: Path, raw: bytes) -> dict[str, Experiment]:
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as exc:  # ValueError: bad JSON or UTF-8
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise ExperimentError(str(path), f"is not valid {kind}: {exc}") from None
    return parse_experiments(data)


def load_experiments(path: str | Path) -> dict[str, Experiment]:
    """The file's experiments; OSError if it cannot be read, ExperimentError if it is bad."""
    path = Path(path)
    return _decode(path, path.read_bytes())


def _fields_data(value: object) -> dict:
    """A dataclass's fields, floats as floats: ``300`` and ``300.0`` must fingerprint alike."""
    return {f.name: float(item) if f.type in ("float", float) else item
            for f in fields(value) if (item := getattr(value, f.name)) is not None}


def to_data(experiment: Experiment) -> dict:
    """The file form of one experiment, defaults included: what runs, not what was written."""
    config = experiment.config
    data = {"name": experiment.name, "model": experiment.model,
            "baseline": _fields_data(experiment.baseline),
            "candidate": _fields_data(experiment.candidate),
            "mode": config.mode.value}
    if config.mode is Mode.SPLIT:
        data["weights"] = {"baseline": float(config.weights[0]),
                           "candidate": float(config.weights[1])}
    if config.mode is Mode.CANARY:
        data["steps"] = [_fields_data(step) for step in config.steps]
    if experiment.sticky_key is not None:
        data["sticky_key"] = experiment.sticky_key
    data.update(salt=experiment.salt, guardrails=_fields_data(config.guardrails),
                srm_threshold=config.srm_threshold,
                shadow={"queue_size": experiment.shadow_queue_size,
                        "explain_sample": experiment.explain_sample})
    if experiment.decided_by != "server":  # absent by default: older states' digests hold
        data["decided_by"] = experiment.decided_by
    return data


_UNREAD = (-1, -1, -1)  # no file has this (mtime_ns, size, inode): the first poll reads


class ExperimentFile:
    """The experiments file, re-read when it changes. Poll from one thread; read ``current``
    from any."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.current: dict[str, Experiment] = {}
        self.last_error: str | None = None  # why the newest content was rejected; None: it is in
        self._seen: tuple[int, int, int] | None = _UNREAD  # None: the file was missing
        self._warned: str | None = None  # sha256 of the bad content last logged

    def poll(self) -> bool:
        """Re-read if the file changed: True when ``current`` was replaced, False when nothing
        changed or the new content was rejected (``last_error`` says why)."""
        raw = b""
        try:
            try:
                stat = self.path.stat()
                signature = stat.st_mtime_ns, stat.st_size, stat.st_ino
            except FileNotFoundError:
                signature = None
            if signature == self._seen:
                return False
            self._seen = signature
            experiments = {}
            if signature is not None:
                raw = self.path.read_bytes()
                experiments = _decode(self.path, raw)
        except (OSError, ExperimentError) as exc:
            return self._reject(str(exc), hashlib.sha256(raw or str(exc).encode()).hexdigest())
        self.current, self.last_error, self._warned = experiments, None, None
        logger.info("experiments file %s: %s", self.path, ", ".join(experiments) or "none")
        return True

    def _reject(self, message: str, content: str) -> bool:
        self.last_error = message
        if content != self._warned:
            self._warned = content
            logger.warning("experiments file %s rejected; still running %s: %s", self.path,
                           ", ".join(self.current) or "no experiments", message)
        return False
