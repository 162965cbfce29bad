"""What travels along the data path: a request's explanation wish, its timing, its result, and
one batch row (``BatchOutput``), the named result a batch worker hands back for each request.

The request id is made here, at the start of the path (``request_id_for``), so a prediction can be
joined to whatever arrives about it later (a label, an A/B outcome).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

import numpy as np

from serving.errors import BadRequest

__all__ = ["BatchOutput", "DEFAULT_TOP_K", "Explain", "Heatmap", "MAX_ID_CHARS", "Result",
           "Timing", "deadline_after", "request_id_for"]

DEFAULT_TOP_K = 5
MAX_ID_CHARS = 128  # request ids, model names and labels: longer ones are refused, not echoed


def request_id_for(given: str = "") -> str:
    """The client's id, checked, or a new one: every request has one from here on."""
    if len(given) > MAX_ID_CHARS:
        raise BadRequest("bad_request_id", f"the request id is {len(given):,} characters; at "
                                           f"most {MAX_ID_CHARS}")
    return given or f"{_id_prefix}{next(_id_counter):016x}"


def _new_id_prefix() -> None:
    """32 hex characters per id: 16 random ones per process, then a counter. uuid4 read the
    OS's randomness for every request, a system call that gives up the GIL: under load, 10% of
    a profile was threads waiting to get it back there. A forked process draws its own."""
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count()


_id_prefix, _id_counter = "", itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def deadline_after(remaining: float | None) -> float | None:
    """gRPC's ``time_remaining()`` (seconds, or None / a huge number without a deadline) -> a
    time.monotonic() deadline or None."""
    if remaining is None or remaining > 365 * 24 * 3600:
        return None
    return time.monotonic() + remaining


@dataclass(frozen=True)
class Explain:
    method: str = "gradcam"
    target: int | None = None  # None: the top-1 class
    png: bool = True
    raw: bool = False


@dataclass(slots=True)
class BatchOutput:
    """One request's share of a batch, from the batch worker."""

    probabilities: np.ndarray  # (K,) float32
    cam: np.ndarray | None  # (h, w) map at the feature map's size; None when not explained
    target: int  # the class the map explains (the top-1 class when none was asked for)
    inference_seconds: float  # the whole batch's interpreter time
    queue_seconds: float  # from submit until its batch started


@dataclass
class Timing:
    decode_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    explain_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass
class Heatmap:
    method: str
    target: int
    png: bytes | None
    raw: np.ndarray | None  # (H, W) float32 in [0, 1]


@dataclass
class Result:
    request_id: str
    model_name: str
    model_version: int
    labels: list[str]
    probabilities: np.ndarray  # (K,) float32
    heatmap: Heatmap | None = None
    timing: Timing = field(default_factory=Timing)
    experiment: str = ""  # set when an A/B experiment routed the request...
    variant: str = ""  # ...with the variant that answered...
    feedback_id: str = ""  # ...and the signed id its late label is sent with

    @property
    def top_class(self) -> int:
        return int(self.probabilities.argmax())

    def top(self, k: int) -> list[tuple[int, str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), self.labels[i], float(self.probabilities[i])) for i in order]
