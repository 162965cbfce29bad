"""The one table from ``serving.errors`` to gRPC status codes, and the decorator that applies it.

Handlers catch ``ServingError`` once, at the edge, and send ``STATUS[type(error)]`` with the
message; anything else is a bug and becomes INTERNAL with a log line (never a leaked traceback).
``cancel_when_call_ends`` ties a unary call's queued work to the call, for both APIs.
"""

from __future__ import annotations

import functools
import logging

import grpc

from serving.errors import (
    INTERNAL_MESSAGE,
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    ModelUnavailable,
    Overloaded,
    ServingError,
    Unauthenticated,
    UnknownModel,
)

__all__ = ["STATUS", "answer_errors", "cancel_when_call_ends", "status_of"]

STATUS: dict[type[ServingError], grpc.StatusCode] = {
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownModel: grpc.StatusCode.NOT_FOUND,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    ModelUnavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_of(error: ServingError) -> grpc.StatusCode:
    """The error's status; INTERNAL for the bare ServingError a bug is wrapped in."""
    return STATUS.get(type(error), grpc.StatusCode.INTERNAL)


def answer_errors(handler=None, *, count: bool = False):
    """Decorate a unary servicer method: a ServingError leaves with its status and message;
    anything else is a bug, logged here, and the client learns no more than INTERNAL.
    ``count`` (``@answer_errors(count=True)``, the inference calls): a refusal the data plane
    did not count, because it came before any image was submitted (a bad batch size, an OIP
    tensor that does not parse), is counted as a rejected request here."""
    if handler is None:
        return functools.partial(answer_errors, count=count)

    @functools.wraps(handler)
    def answered(self, request, context):
        try:
            return handler(self, request, context)
        except ServingError as exc:
            if count and not exc.counted:
                self.inference.observer.rejected_request(exc.reason, type(exc).__name__)
                exc.counted = True
            context.abort(status_of(exc), str(exc))
        except Exception:
            logging.getLogger("sightline.service").exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return answered


def cancel_when_call_ends(context):
    """``on_cancel`` for ``Inference.submit``: the job is cancelled when the unary call ends
    (its client left, or its deadline passed). gRPC refuses a callback once the call has
    ended, as when a cancel raced the submit; the job is then cancelled at once."""

    def register(cancel) -> None:
        if not context.add_callback(cancel):
            cancel()

    return register
