"""The gRPC interceptor that counts every RPC: py-grpc-prometheus's names and labels.

It wraps each method's handler once and appends one row per RPC start and end to
``ServingMetrics``' logs (no locks, no Prometheus call per RPC); the logs are folded into the
counters and histograms at scrape time.
"""

from __future__ import annotations

import time

import grpc

from serving.observe.metrics import ServingMetrics

__all__ = ["GrpcMetricsInterceptor"]


class GrpcMetricsInterceptor(grpc.ServerInterceptor):
    """RED metrics for every RPC, named as py-grpc-prometheus names them."""

    def __init__(self, metrics: ServingMetrics):
        self.m = metrics
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # wrapped once per method

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        wrapped = self._handlers.get(method)
        if wrapped is None:  # unknown methods stay uncached: clients choose their names
            wrapped = self._wrap(continuation(handler_call_details), method)
            if wrapped is not None:
                self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, handler, method_path: str):
        if handler is None:
            return None
        service, _, method = method_path.lstrip("/").rpartition("/")
        if handler.request_streaming and handler.response_streaming:
            kind, wrap, factory = ("bidi_stream", self._streaming,
                                   grpc.stream_stream_rpc_method_handler)
            behavior = handler.stream_stream
        elif not handler.request_streaming and not handler.response_streaming:
            kind, wrap, factory = ("unary", self._unary, grpc.unary_unary_rpc_method_handler)
            behavior = handler.unary_unary
        else:  # Sightline has no half-streaming methods; count them without wrapping
            return handler
        labels = (kind, service, method)
        return factory(wrap(behavior, labels), handler.request_deserializer,
                       handler.response_serializer)

    def _finish(self, labels, context, started, received, sent, code=None):
        code = code or context.code() or grpc.StatusCode.OK
        self.m.rpc_finished(labels, code.name, time.perf_counter() - started, received, sent)

    def _unary(self, behavior, labels):
        def wrapped(request, context):
            started = time.perf_counter()
            self.m.rpc_started(labels)
            try:
                response = behavior(request, context)
            except BaseException:
                self._finish(labels, context, started, 1, 0,
                             context.code() or grpc.StatusCode.UNKNOWN)
                raise
            self._finish(labels, context, started, 1, 1)
            return response

        return wrapped

    def _streaming(self, behavior, labels):
        def wrapped(request_iterator, context):
            started = time.perf_counter()
            self.m.rpc_started(labels)
            received = [0]

            def counted():
                for request in request_iterator:
                    received[0] += 1
                    yield request

            sent = 0
            try:
                for response in behavior(counted(), context):
                    sent += 1
                    yield response
            except GeneratorExit:  # the client went away mid-stream
                self._finish(labels, context, started, received[0], sent,
                             grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._finish(labels, context, started, received[0], sent,
                             context.code() or grpc.StatusCode.UNKNOWN)
                raise
            self._finish(labels, context, started, received[0], sent)

        return wrapped
