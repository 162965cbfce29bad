"""An experiment's decision state, kept on disk so that a restart resumes it.

What it is: ``ExperimentState`` (what the last ``decide.Decision`` implies: state, candidate
share, canary step and when it started, the reason, when it was written, and the
``config_digest`` of the definition it was decided under) and ``StateStore``, which keeps one
JSON file per experiment, ``<directory>/<name>.json``. The directory is
``<model repository>/.experiments/``: the repository's scanner skips dot-directories.

Who calls it: whatever runs ``decide`` on a timer: ``restore`` once per experiment at start
(or when the definition changes), ``save`` after each decision that changed something,
``remove`` when an operator ends an experiment for good.

What it guarantees:
- ``save`` is atomic: a temporary file in the same directory, fsynced, ``os.replace``d over the
  old one, then the directory fsynced. A crash at any point leaves the old state or the new one,
  never a torn file.
- ``load`` never raises: an absent file is None; a corrupt or unreadable one is None and a
  warning (logger ``sightline.routing``).
- ``restore`` resumes a state only under the definition it was decided for: a terminal state
  (rolled back, halted, promotable) stays terminal across restarts, and changing the definition
  (any field of ``experiment.to_data``, the salt included) starts the experiment afresh.
- Times are the caller's ``now``; a state outlives the process, so that must be wall-clock
  seconds (``time.time()``), not a monotonic clock, or a canary step's age is wrong after a
  reboot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from serving.routing.decide import State
from serving.routing.experiment import NAME_PATTERN, Experiment, to_data

__all__ = ["ExperimentState", "StateStore", "config_digest"]

logger = logging.getLogger("sightline.routing")


def config_digest(experiment: Experiment) -> str:
    """sha256 of the definition as canonical JSON: the same for the same definition in any
    process, any key order in the file and any spelling of a number."""
    text = json.dumps(to_data(experiment), sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ExperimentState:
    name: str
    state: State
    candidate_share: float
    step_index: int  # canary: the current step; 0 otherwise
    step_started_at: float  # wall-clock seconds
    reason: str  # the deciding number, from decide.Decision
    updated_at: float  # wall-clock seconds
    config_digest: str
    operator_share: float | None = None  # set by SetWeight: it holds until the next verdict

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", State(self.state))
        if not 0 <= self.candidate_share <= 1 or self.step_index < 0:
            raise ValueError(f"need 0 <= candidate_share <= 1 and step_index >= 0: {self}")
        if self.operator_share is not None and not 0 <= self.operator_share <= 1:
            raise ValueError(f"need 0 <= operator_share <= 1: {self}")
        if not (math.isfinite(self.step_started_at) and math.isfinite(self.updated_at)):
            raise ValueError(f"times must be finite: {self}")


_TYPES = {"name": str, "state": str, "candidate_share": float, "step_index": int,
          "step_started_at": float, "reason": str, "updated_at": float, "config_digest": str}


def _from_data(data: object, name: str) -> ExperimentState:
    """The state in a file, checked field by field: a hand-edited or foreign file is refused."""
    if not isinstance(data, dict):
        raise ValueError(f"need exactly the keys {', '.join(_TYPES)}")
    data = dict(data)
    operator_share = data.pop("operator_share", None)  # absent from older files
    if operator_share is not None and type(operator_share) not in (int, float):
        raise ValueError(f"operator_share must be float; got {type(operator_share).__name__}")
    if set(data) != set(_TYPES):
        raise ValueError(f"need exactly the keys {', '.join(_TYPES)}")
    for key, kind in _TYPES.items():
        value = data[key]
        numeric = kind is float and type(value) is int
        if not (type(value) is kind or numeric):
            raise ValueError(f"{key} must be {kind.__name__}; got {type(value).__name__}")
    if data["name"] != name:
        raise ValueError(f"it holds experiment {data['name'][:64]!r}")
    return ExperimentState(**data, operator_share=operator_share)


class StateStore:
    """One JSON file per experiment in ``directory``, created (mode 0o755) on the first save."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        if not NAME_PATTERN.fullmatch(name):  # a name is a file name here: no "/" and no ".."
            raise ValueError(f"not an experiment name: {name[:64]!r}")
        return self.directory / f"{name}.json"

    def save(self, state: ExperimentState) -> None:
        """Replace the experiment's file atomically; OSError if the disk refuses."""
        path = self._path(state.name)
        try:
            self.directory.mkdir(mode=0o755)
            os.chmod(self.directory, 0o755)  # mkdir's mode is masked by the umask
        except FileExistsError:
            pass
        text = json.dumps(dataclasses.asdict(state), indent=2, allow_nan=False) + "\n"
        fd, temporary = tempfile.mkstemp(prefix=f".{state.name}.", suffix=".tmp",
                                         dir=self.directory)
        try:
            with os.fdopen(fd, "w") as file:
                os.fchmod(file.fileno(), 0o644)
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def load(self, name: str) -> ExperimentState | None:
        """The saved state; None when there is none or it cannot be read (logged)."""
        path = self._path(name)
        try:
            return _from_data(json.loads(path.read_bytes()), name)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, UTF-8 or values
            logger.warning("experiment state %s is unreadable, so ignored: %s", path, exc)
            return None

    @staticmethod
    def initial(experiment: Experiment, now: float) -> ExperimentState:
        """A new experiment: running, at its first step's share (no store needed)."""
        return ExperimentState(experiment.name, State.RUNNING,
                               experiment.config.candidate_share(0), 0, now, "started", now,
                               config_digest(experiment))

    def restore(self, experiment: Experiment, now: float) -> ExperimentState:
        """The saved state if it was decided under this definition; else a fresh start."""
        saved = self.load(experiment.name)
        fresh = self.initial(experiment, now)
        steps = max(1, len(experiment.config.steps))
        if saved is not None and saved.step_index >= steps:  # a hand-edited file
            logger.warning("experiment %s: its saved step %d is past its %d steps; starting "
                           "afresh", experiment.name, saved.step_index, steps)
            return fresh
        if saved is None or saved.config_digest == fresh.config_digest:
            return saved or fresh
        logger.warning("experiment %s: its definition changed since its state was saved (%s at "
                       "%g%%: %s); starting afresh", experiment.name, saved.state,
                       saved.candidate_share * 100, saved.reason)
        return dataclasses.replace(fresh, reason=f"started afresh: the definition changed "
                                                 f"(was {saved.state.value})")

    def remove(self, name: str) -> None:
        """Forget the experiment's state; nothing to do when there is none."""
        self._path(name).unlink(missing_ok=True)
