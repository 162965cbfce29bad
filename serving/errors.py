"""One error tree for the serving path; it knows nothing of gRPC (``serving.api.status`` maps it).

Every failure a client can cause or meet is a ``ServingError`` with a ``reason`` (a short label
from a fixed set, safe as a metric label) and a message that names the problem. A message may
repeat what the client sent only through ``shown``, which clips it.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Cancelled",
    "DeadlineExceeded",
    "ModelUnavailable",
    "FailedPrecondition",
    "Overloaded",
    "ServingError",
    "UnknownModel",
    "Unauthenticated",
    "shown",
]

INTERNAL_MESSAGE = "internal error (logged by the server)"
SHOWN_CHARS = 48  # the most of a client's string an error message repeats


def shown(value) -> str:
    """A client-supplied string or list as an error message may repeat it: repr, clipped. A
    message that echoed a 10 MB name would exceed gRPC's metadata limit, and the client would
    see a transport error instead of the real one. Clipped before repr, so a 16-million-entry
    shape costs nothing to show."""
    if isinstance(value, str | bytes):
        text = repr(value[:SHOWN_CHARS])
        return text if len(value) <= SHOWN_CHARS else f"{text}... ({len(value):,} long)"
    items = list(value[:8])
    text = repr(items)
    return text if len(value) <= 8 else f"{text[:-1]}, ...] ({len(value):,} items)"


class ServingError(Exception):
    counted = False  # set once the observer has counted it as a rejected request

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class BadRequest(ServingError):
    """The request itself is wrong: bytes, tensor, top_k, CAM method, target class."""


class UnknownModel(ServingError):
    """No such model, version or label in the repository."""


class Overloaded(ServingError):
    """The batch queue is full: back off and retry (load shedding)."""


class DeadlineExceeded(ServingError):
    """The deadline passed before the request could run; it was never run."""


class Cancelled(ServingError):
    """The client went away."""


class ModelUnavailable(ServingError):
    """No model is loaded yet, or the server is shutting down."""


class Unauthenticated(ServingError):
    """A missing or wrong bearer token."""


class FailedPrecondition(ServingError):
    """The request is well formed, but the state it needs is not there (an ended experiment,
    a baseline that is not a label)."""
