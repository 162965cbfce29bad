"""Admission: how many handler threads calls may hold, so that health checks always find one.

gRPC's sync server runs every call on one thread pool, and a call holds its thread until it
ends: an idle ClassifyStream holds one for as long as the client keeps it open. With nothing
bounding that, 128 idle streams took every thread, and Classify and even ``Health/Check``
waited until their deadlines (on Kubernetes: failed probes, a healthy pod killed).

The pool is sized ``max_unary + max_streams + WATCH_SLOTS + RESERVED_THREADS``. A unary call
past ``max_unary`` in flight, or a streaming call past ``max_streams`` open, is refused with
RESOURCE_EXHAUSTED at once, naming the limit. ``Health/Watch`` streams, which need no token and
are meant to stay open, have slots of their own, so they cannot crowd out ClassifyStream.
``Health/Check`` is never counted or refused, and the reserved threads are always there for it
and for the refusals, each of which takes microseconds. Slots are taken on the handler thread
itself, when the call starts running, and given back when it ends, so a call gRPC drops before
running it holds nothing.

Shutdown (``close``): from then on every new call but ``Health/Check`` gets UNAVAILABLE, which
clients retry elsewhere, while the calls already running finish; ``wait_idle`` waits for them,
and ``wait_quiet`` for the calls that were still queued inside gRPC to be answered too (gRPC's
own stop cancels those: under load, calls sent in the last ~15 ms before the close).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

__all__ = ["RESERVED_THREADS", "WATCH_SLOTS", "Admission", "pool_size"]

RESERVED_THREADS = 16  # for health checks and for refusing calls over the limits
WATCH_SLOTS = 8  # Health/Watch streams open at once
ALWAYS_ADMITTED = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def pool_size(max_unary: int, max_streams: int) -> int:
    """Handler threads the server needs so that every admitted call, every health check and
    every refusal finds one."""
    return max_unary + max_streams + WATCH_SLOTS + RESERVED_THREADS


class _Slots:
    def __init__(self, limit: int, what: str, idle: threading.Condition):
        self.limit = limit
        self.what = what  # for the refusal: "unary calls in flight (grpc_threads)"
        self.used = 0
        self._idle = idle  # shared by all slots: notified when a call ends

    def take(self) -> bool:
        with self._idle:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._idle:
            self.used -= 1
            self._idle.notify_all()


class Admission(grpc.ServerInterceptor):
    """Counts running calls per kind and refuses those over the limit. It wraps each method's
    handler once, so it goes behind interceptors that decide per call (auth), never before.
    ``on_refused(kind)`` ("unary" or "stream") is told of each refusal, e.g. for a counter."""

    def __init__(self, max_unary: int, max_streams: int,
                 on_refused: Callable[[str], None] | None = None):
        self._idle = threading.Condition()
        self.unary = _Slots(max_unary, "unary calls in flight (grpc_threads)", self._idle)
        self.streams = _Slots(max_streams, "streams open (max_streams)", self._idle)
        self.watches = _Slots(WATCH_SLOTS, "Health/Watch streams open", self._idle)
        self.closing = False
        self._last_refusal = 0.0  # time.monotonic() of the last call refused while closing
        self._on_refused = on_refused
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # wrapped once per method

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None or method == ALWAYS_ADMITTED:
                return handler  # unknown methods stay uncached: clients choose their names
            wrapped = self._handlers[method] = self._wrap(handler, method)
        return wrapped

    def close(self) -> None:
        """Refuse every new call but Health/Check with UNAVAILABLE; running calls go on."""
        self.closing = True

    def in_flight(self) -> int:
        """Unary calls and streams running now (Health/Watch streams not counted)."""
        with self._idle:
            return self.unary.used + self.streams.used

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no unary call or stream runs; False if some still do after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self.unary.used + self.streams.used == 0,
                                       timeout)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """After ``close``: wait until no call has been refused for ``quiet`` seconds, so that
        every call gRPC had queued has had its UNAVAILABLE; False if calls keep coming."""
        end = time.monotonic() + timeout
        while (since := time.monotonic() - self._last_refusal) < quiet:
            if time.monotonic() + quiet - since > end:
                return False
            time.sleep(quiet - since)
        return True

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        serializers = (handler.request_deserializer, handler.response_serializer)
        streams = self.watches if method == HEALTH_WATCH else self.streams
        if not handler.request_streaming and not handler.response_streaming:
            return grpc.unary_unary_rpc_method_handler(
                self._call(handler.unary_unary, self.unary, "unary"), *serializers)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, streams), *serializers)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, streams), *serializers)
        return grpc.stream_unary_rpc_method_handler(
            self._call(handler.stream_unary, streams, "stream"), *serializers)

    def _refuse(self, context, kind: str, slots: _Slots) -> None:
        if self.closing:
            self._last_refusal = time.monotonic()
            context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on "
                                                       "another replica")
        if self._on_refused is not None:
            self._on_refused(kind)
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is at its limit of "
                      f"{slots.limit} {slots.what}; retry with backoff")

    def _call(self, behavior, slots: _Slots, kind: str):
        def admitted(request, context):
            if self.closing or not slots.take():
                self._refuse(context, kind, slots)
            try:
                return behavior(request, context)
            finally:
                slots.give()

        return admitted

    def _stream(self, behavior, slots: _Slots):
        def admitted(request, context):
            if self.closing or not slots.take():
                self._refuse(context, "stream", slots)
            try:
                yield from behavior(request, context)
            finally:
                slots.give()

        return admitted
