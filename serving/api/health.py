"""grpc.health.v1: Check, and Watch streams told of every change, without grpc_health's deadlock.

grpc_health's ``HealthServicer`` sends Watch updates while holding its lock, and gRPC's sync
server blocks each send until its polling thread has processed the send's completion. When a
watcher goes away, that polling thread runs the servicer's close callback, which takes the same
lock: the sender waits for the polling thread and the polling thread for the sender, and the
whole server stops (caught in CI: a stop that hung while watches were being cancelled; the
same happens to a model reload). grpc/grpc#43403 proposes a separate send lock upstream.

Here the polling thread only ever takes ``_lock``, held for dictionary updates and never while
sending; sends happen under ``_sending``, which also keeps each watcher's updates in order
(Watch takes it first, so its first answer cannot arrive after a newer status). A status that
did not change is not sent again: the server refreshes health every repository poll. A watch
keeps its service name while open, and health needs no token: names past ``MAX_SERVICE_NAME``
are refused, or 1,024 open watches with 16 MiB names would hold 16 GiB.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import SERVICE_NAME  # the library's constant; not its servicer

__all__ = ["SERVICE_NAME", "Health"]

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

MAX_SERVICE_NAME = 256  # characters; every name the server sets is far shorter
Send = Callable[[health_pb2.HealthCheckResponse], None]


class Health(health_pb2_grpc.HealthServicer):
    """Statuses per service name ("" is the whole server); ``enter_graceful_shutdown`` makes
    every one NOT_SERVING for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # statuses and watchers; the polling thread takes it
        self._sending = threading.Lock()  # held while sending; never by the polling thread
        self._status: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._watchers: dict[str, set[Send]] = {}
        self._shutting_down = False

    def Check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service[:200]!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context, send_response_callback: Send):
        service = request.service
        if len(service) > MAX_SERVICE_NAME:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"a service name is at most "
                          f"{MAX_SERVICE_NAME} characters; this one has {len(service):,}")
        with self._sending:
            with self._lock:
                status = self._status.get(service, UNKNOWN)
                self._watchers.setdefault(service, set()).add(send_response_callback)
            if not context.add_callback(lambda: self._forget(service, send_response_callback)):
                self._forget(service, send_response_callback)  # the stream already ended
                return
            send_response_callback(health_pb2.HealthCheckResponse(status=status))

    Watch.experimental_non_blocking = True  # answered by callback: the stream holds no thread

    def set(self, service: str, status: int) -> None:
        with self._sending:
            with self._lock:
                if self._shutting_down or self._status.get(service) == status:
                    return
                self._status[service] = status
                watchers = list(self._watchers.get(service, ()))
            _send(watchers, status)

    def enter_graceful_shutdown(self) -> None:
        with self._sending:
            with self._lock:
                if self._shutting_down:
                    return
                self._shutting_down = True
                changed = [name for name, status in self._status.items() if status != NOT_SERVING]
                for name in changed:
                    self._status[name] = NOT_SERVING
                watchers = [send for name in changed for send in self._watchers.get(name, ())]
            _send(watchers, NOT_SERVING)

    def _forget(self, service: str, send: Send) -> None:
        with self._lock:
            watchers = self._watchers.get(service)
            if watchers is not None:
                watchers.discard(send)
                if not watchers:  # names a client made up must not pile up
                    del self._watchers[service]


def _send(watchers: list[Send], status: int) -> None:
    response = health_pb2.HealthCheckResponse(status=status)
    for send in watchers:
        send(response)  # a watcher that has gone returns at once
