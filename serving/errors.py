"""One error tree for the serving path, and the one table that maps it to gRPC status codes.

Every failure a client can cause or meet is a ``ServingError`` with a ``reason`` (a short label
from a fixed set, safe as a metric label) and a message that names the problem. Handlers catch
``ServingError`` once, at the edge, and send ``STATUS[type(error)]`` with the message; anything
else is a bug and becomes INTERNAL with a log line (never a leaked traceback).
"""

from __future__ import annotations

import functools
import logging

import grpc

__all__ = [
    "BadRequest",
    "Cancelled",
    "DeadlineExceeded",
    "ModelUnavailable",
    "Overloaded",
    "ServingError",
    "UnknownModel",
    "Unauthenticated",
    "answer_errors",
    "status_of",
]

INTERNAL_MESSAGE = "internal error (logged by the server)"


class ServingError(Exception):
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


STATUS: dict[type[ServingError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}


def status_of(error: ServingError) -> grpc.StatusCode:
    return STATUS[type(error)]


def answer_errors(handler):
    """Decorate a unary servicer method: a ServingError leaves with its status and message;
    anything else is a bug, logged here, and the client learns no more than INTERNAL."""

    @functools.wraps(handler)
    def answered(self, request, context):
        try:
            return handler(self, request, context)
        except ServingError as exc:
            context.abort(status_of(exc), str(exc))
        except Exception:
            logging.getLogger("sightline.service").exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return answered
