"""Admission: how many handler threads calls may hold, so that every call gets a fast answer.

gRPC's sync server runs every call on one thread pool, and a call holds its thread from the
moment it arrives until its handler ends: while its request message has not come yet (a client
can send headers and nothing more), and for as long as a stream stays open. With nothing
bounding that, 128 idle streams took every thread, and Classify and even ``Health/Check``
waited until their deadlines (on Kubernetes: failed probes, a healthy pod killed).

Each call is counted in its class from the moment it arrives, before its message is read:
unary calls (``grpc_threads``), streams (``max_streams``) and health calls (a small fixed
number). ``Health/Watch`` counts as a health call: it holds no thread once set up (the health
servicer answers it by callback), so its slot is back at once; open watches are bounded apart
(``max_watches``, about 19 KB each), since a client may open them without a token and keep
them. A call over its class's limit is answered RESOURCE_EXHAUSTED at once, naming the limit,
by one of ``REFUSAL_THREADS`` kept for that. The slot is given back when the call's pool task
ends (``AdmittedExecutor``), whether or not its handler ever ran. The pool has a thread for
every slot plus the refusal threads, and gRPC's own ``maximum_concurrent_rpcs`` is set to the
pool's size, so a call never waits for a thread: past every limit, gRPC itself refuses it. So
one class cannot starve another: health checks answer however many unary calls or streams are
held, and a client that sends half calls can only fill the class it sends them to, and only
get refusals back.

Deadline-aware: a unary call is also refused at once (RESOURCE_EXHAUSTED) when the wait it can
expect exceeds ``wait_share`` of what its deadline leaves. Only a share, because the estimate is
a mean, and the tail of the wait and the time the call spent inside gRPC before it reached
Python are not in it: under a 10x burst, admitting up to the whole deadline left 31% of calls
ending DEADLINE_EXCEEDED and 20% of the results computed too late; a third, 2.2% and 0.6%
(docs/benchmarks.md). A call waits about (calls in flight, itself included)
completion intervals (Little's law). The interval is a running average over intervals between
unary completions measured while other calls were still in flight, so it reads the server's
service rate under load, never the gaps of a quiet period, and it is used only once about 50
have been seen. On an idle server nothing is refused on this ground. The rule itself is the
pure function ``expected_wait``.

Shutdown (``close``): from then on every new call but ``Health/Check`` gets UNAVAILABLE, which
clients retry elsewhere, while the calls already running finish; ``wait_idle`` waits for them,
and ``wait_quiet`` for the calls that were still queued inside gRPC to be answered too (gRPC's
own stop cancels those: under load, calls sent in the last ~15 ms before the close).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures

import grpc

__all__ = ["HEALTH_SLOTS", "MALFORMED", "REFUSAL_THREADS", "WATCH_STREAMS", "Admission",
           "AdmittedExecutor", "expected_wait", "refusal"]

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH = "/grpc.health.v1.Health/"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
WATCH_STREAMS = 1024  # open Health/Watch streams: one per client channel that health-checks
HEALTH_SLOTS = 8  # health calls being answered at once: a probe needs one
REFUSAL_THREADS = 8  # answering calls over their limit, microseconds each
MALFORMED = object()  # what a request that does not parse becomes (streams get it too)
RATE_WEIGHT = 0.02  # EWMA weight of each new completion interval (about the last 50)


def expected_wait(calls: int, interval: float | None, busy_calls: int) -> float:
    """Seconds a unary call can expect to take with ``calls`` in flight, itself included, when
    each takes ``interval`` seconds of the server's capacity; 0 below ``busy_calls`` calls or
    before the interval is measured."""
    if interval is None or calls < busy_calls:
        return 0.0
    return calls * interval


class _Slots:
    def __init__(self, limit: int, what: str, changed: threading.Condition):
        self.limit = limit
        self.what = what  # for the refusal: "unary calls in flight (grpc_threads)"
        self.used = 0
        self._changed = changed  # shared by all classes: notified when a call ends

    def take(self) -> bool:
        with self._changed:
            if self.used >= self.limit:
                return False
            self.used += 1
            return True

    def give(self) -> None:
        with self._changed:
            self.used -= 1
            self._changed.notify_all()


class Admission(grpc.ServerInterceptor):
    """The interceptor behind auth; it decides when a call arrives, on gRPC's polling thread,
    and hands the slot it took to ``AdmittedExecutor``, which gives it back when the call ends.
    ``on_refused(reason)`` ("busy" or "would_miss_deadline") is told of each refusal."""

    def __init__(self, max_unary: int, max_streams: int,
                 on_refused: Callable[[str], None] | None = None, busy_calls: int = 2,
                 max_watches: int = WATCH_STREAMS, wait_share: float = 1 / 3):
        self._changed = threading.Condition()
        self.wait_share = wait_share  # of the deadline left, the most a call may expect to wait
        self.unary = _Slots(max_unary, "unary calls in flight (grpc_threads)", self._changed)
        self.streams = _Slots(max_streams, "streams open (max_streams)", self._changed)
        self.checks = _Slots(HEALTH_SLOTS, "health calls in flight", self._changed)
        self.watches = _Slots(max_watches, "Health/Watch streams open", self._changed)
        self.busy_calls = busy_calls  # calls in flight (this one too) for a sample to count
        self.interval: float | None = None  # EWMA seconds between unary completions when busy
        self.closing = False
        self._on_refused = on_refused
        self._handoff = threading.local()  # the slot taken for the call about to be submitted
        self._last_done: float | None = None
        self._average: float | None = None  # the interval's running average, once measured
        self._samples = 0
        self._last_refusal = 0.0  # time.monotonic() of the last call refused while closing
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # wrapped handlers, once per method

    @property
    def threads(self) -> int:
        """Handler threads the pool needs: one per slot, and the refusal threads."""
        return self.unary.limit + self.streams.limit + HEALTH_SLOTS + REFUSAL_THREADS

    def intercept_service(self, continuation, handler_call_details):
        self._give_back_unsubmitted()
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        slots = self._slots_for(method, handler)
        if self.closing and method != HEALTH_CHECK:
            self._last_refusal = time.monotonic()
            return refusal(handler, grpc.StatusCode.UNAVAILABLE,
                            "the server is shutting down; retry on another replica")
        if not slots.take():
            if self._on_refused is not None:
                self._on_refused("busy")
            return refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the server is at its limit of {slots.limit} {slots.what}; retry "
                            "with backoff")
        self._handoff.slots = slots
        if method == HEALTH_WATCH:
            return self._bounded_watch(handler)
        if slots is self.unary:
            return self._deadline_aware(method, handler)
        if handler.request_streaming and handler.response_streaming:
            return self._tolerant_stream(method, handler)
        return handler

    def take_handoff(self) -> _Slots | None:
        """The slot taken for the call gRPC is submitting now (AdmittedExecutor.submit)."""
        slots = getattr(self._handoff, "slots", None)
        self._handoff.slots = None
        return slots

    def call_ended(self, slots: _Slots) -> None:
        """A call's pool task ended: one lock for the interval sample and the slot."""
        with self._changed:
            if slots is self.unary:
                self._sample_completion()
            slots.used -= 1
            self._changed.notify_all()

    def close(self) -> None:
        """Refuse every new call but Health/Check with UNAVAILABLE; running calls go on."""
        self.closing = True

    def in_flight(self) -> int:
        """Unary calls and streams running now (health calls not counted)."""
        with self._changed:
            return self.unary.used + self.streams.used

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no unary call or stream runs; False if some still do after ``timeout``."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.unary.used + self.streams.used == 0, timeout)

    def wait_quiet(self, quiet: float, timeout: float) -> bool:
        """After ``close``: wait until no call has been refused for ``quiet`` seconds, so that
        every call gRPC had queued has had its UNAVAILABLE; False if calls keep coming. Quiet
        counts from this call at the earliest: a call that reached gRPC just before it may not
        have been handed to the interceptor yet (its polling thread waits for the GIL), and
        gRPC's stop would cancel it."""
        start = time.monotonic()
        end = start + timeout
        while (since := time.monotonic() - max(self._last_refusal, start)) < quiet:
            if time.monotonic() + quiet - since > end:
                return False
            time.sleep(quiet - since)
        return True

    def _slots_for(self, method: str, handler: grpc.RpcMethodHandler) -> _Slots:
        if method.startswith(HEALTH):
            return self.checks
        if handler.request_streaming or handler.response_streaming:
            return self.streams
        return self.unary

    def _give_back_unsubmitted(self) -> None:
        """gRPC refused the last call after the interceptors (its own concurrency limit), so it
        was never submitted: its slot goes back."""
        slots = self.take_handoff()
        if slots is not None:
            slots.give()

    def _sample_completion(self) -> None:
        """Intervals between completions count only inside a busy period; the estimate is used
        once it has seen about 1 / RATE_WEIGHT of them. Called with the lock held."""
        if self.unary.used < self.busy_calls:
            self._last_done = None  # the busy period (if any) ended
            return
        now = time.monotonic()
        if self._last_done is not None:
            sample = now - self._last_done
            self._average = (sample if self._average is None else
                             self._average + RATE_WEIGHT * (sample - self._average))
            self._samples += 1
            if self._samples >= 1 / RATE_WEIGHT:
                self.interval = self._average
        self._last_done = now

    def _deadline_aware(self, method: str, handler: grpc.RpcMethodHandler):
        """The unary handler, refusing calls that would miss their deadline, and answering a
        request that is not a valid message with INVALID_ARGUMENT (gRPC's own answer would be
        INTERNAL, with a traceback in the log for each). It is request-streaming on the wire's
        terms (the wire is the same), so the refusal is decided before the request message is
        read: it does not wait for gRPC's polling thread to deliver a message it will drop."""
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            behavior, deserialize = handler.unary_unary, handler.request_deserializer

            def admitted(request_iterator, context):
                wait = expected_wait(self.unary.used, self.interval, self.busy_calls)
                remaining = context.time_remaining() if wait else None
                if remaining is not None and wait > remaining * self.wait_share:
                    if self._on_refused is not None:
                        self._on_refused("would_miss_deadline")
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"the server is busy: a call now waits about "
                                  f"{wait * 1000:.0f} ms, more than {self.wait_share:.0%} of the "
                                  f"{remaining * 1000:.0f} ms its deadline leaves "
                                  "(admit_wait_share); retry with backoff")
                request = next(request_iterator, None)
                if request is None:  # the call ended, or the client closed without a message
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"no request message came for {method}")
                if request is MALFORMED:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid "
                                  f"message for {method}")
                return behavior(request, context)

            wrapped = self._wrapped[method] = grpc.stream_unary_rpc_method_handler(
                admitted, _tolerant(deserialize), handler.response_serializer)
        return wrapped

    def _bounded_watch(self, handler: grpc.RpcMethodHandler):
        """Health/Watch, counted while open: its slot goes back when the stream ends."""
        wrapped = self._wrapped.get(HEALTH_WATCH)
        if wrapped is None:
            behavior, watches = handler.unary_stream, self.watches

            def watch(request, context, send_response_callback=None):
                if not watches.take():
                    if self._on_refused is not None:
                        self._on_refused("busy")
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is at its "
                                  f"limit of {watches.limit} {watches.what}; retry with backoff")
                if not context.add_callback(watches.give):  # the stream already ended
                    watches.give()
                if send_response_callback is None:
                    return behavior(request, context)
                return behavior(request, context, send_response_callback=send_response_callback)

            # the health servicer answers by callback and frees its thread; keep it so
            watch.experimental_non_blocking = getattr(behavior, "experimental_non_blocking",
                                                      False)
            wrapped = self._wrapped[HEALTH_WATCH] = grpc.unary_stream_rpc_method_handler(
                watch, handler.request_deserializer, handler.response_serializer)
        return wrapped

    def _tolerant_stream(self, method: str, handler: grpc.RpcMethodHandler):
        """A bidi stream whose messages that do not parse arrive as ``MALFORMED``, so that the
        servicer can answer each with an error of its own (ClassifyStream does) instead of gRPC
        ending the whole stream with INTERNAL."""
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = self._wrapped[method] = grpc.stream_stream_rpc_method_handler(
                handler.stream_stream, _tolerant(handler.request_deserializer),
                handler.response_serializer)
        return wrapped


def _tolerant(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data) if deserialize is not None else data
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, or worse
            return MALFORMED

    return parse


class AdmittedExecutor(futures.ThreadPoolExecutor):
    """The server's handler pool: gives each call's admission slot back when its task ends,
    whether its handler ran, refused it, or never got its request message."""

    def __init__(self, admission: Admission):
        super().__init__(max_workers=admission.threads, thread_name_prefix="grpc")
        self.admission = admission

    def submit(self, fn, /, *args, **kwargs):
        slots = self.admission.take_handoff()
        if slots is None:
            return super().submit(fn, *args, **kwargs)

        def run():
            try:
                return fn(*args, **kwargs)
            finally:
                self.admission.call_ended(slots)

        return super().submit(run)


def refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str):
    """A handler for ``handler``'s method that answers ``code`` at once. It is request-streaming
    whatever the method is (the wire is the same), because gRPC runs a unary-request handler
    only once the request message has come, and a client may never send it."""

    def refuse(request_iterator, context):
        context.abort(code, details)

    serializers = (handler.request_deserializer, handler.response_serializer)
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, *serializers)
    return grpc.stream_unary_rpc_method_handler(refuse, *serializers)
