"""``sightline.classifier.v1.ImageClassifier``: Classify, ClassifyBatch, ClassifyStream and
GetModelInfo.

Translates messages to ``Inference.submit`` / ``finish`` calls and results back; every
``ServingError`` leaves with its status code (``serving.api.status``) and a message naming the
problem. In a batch or a stream a bad request gets an error response of its own and the others
go on.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time

import grpc

from serving.api.admission import MALFORMED
from serving.api.status import answer_errors, cancel_when_call_ends, status_of
from serving.cam import METHODS
from serving.card import MODEL_FILE
from serving.errors import INTERNAL_MESSAGE, BadRequest, Cancelled, DeadlineExceeded, ServingError
from serving.inference.dataplane import Inference
from serving.inference.types import MAX_ID_CHARS, Explain, Result, deadline_after
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

__all__ = ["ClassifierService", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageClassifier"].full_name
log = logging.getLogger("sightline.service")
_SHUTDOWN = object()  # put on a stream's queue by close_streams
# An input that ends with nothing in flight may be gRPC refusing an oversized message, whose
# cancellation arrives a moment later: this long is waited for it (else the stream reads OK).
END_GRACE_SECONDS = 0.05


class ClassifierService(pb_grpc.ImageClassifierServicer):
    def __init__(self, inference: Inference, stream_window: int = 64,
                 idle_seconds: float = 30.0, max_images: int = 64):
        self.inference = inference
        self.max_images = max_images  # requests in one ClassifyBatch (max_request_images)
        self.stream_window = stream_window  # requests of one stream in flight at once
        self.idle_seconds = idle_seconds  # stream_idle_seconds
        self._open: set[_StreamState] = set()  # streams running now, for close_streams
        self._closing = False
        self._lock = threading.Lock()

    @answer_errors(count=True)
    def Classify(self, request, context):
        return _response(*self.inference.finish(self._submit(request, context)))

    @answer_errors(count=True)
    def ClassifyBatch(self, request, context):
        """Every request is submitted before any is finished, so they share the batcher's
        batches. Each submitted one is finished, whatever the others did, so every version held
        is released. Once the call is cancelled or past its deadline no more are submitted, and
        it ends with that status (for the metrics: no client reads it)."""
        requests = request.requests
        if not 1 <= len(requests) <= self.max_images:
            raise BadRequest("bad_batch_size", f"a batch holds 1 to {self.max_images} requests "
                                               f"(max_request_images); got {len(requests):,}")
        submitted = []
        try:
            for item in requests:
                submitted.append(self._submit_item(item, context) if context.is_active() else
                                 _ended(context))
        finally:  # finish every one submitted, even if the loop itself failed
            responses = [self._answer(item, outcome)
                         for item, outcome in zip(requests, submitted, strict=False)]
        if not context.is_active():
            ended = _ended(context)
            ended.counted = True  # what it held was counted request by request
            raise ended
        return pb.ClassifyBatchResponse(responses=responses)

    def ClassifyStream(self, request_iterator, context):
        """A reader thread decodes and queues each request as it arrives (up to stream_window
        in flight), so one stream fills batches; responses leave in completion order. Every
        request yields exactly one response, an error response included. A stream with no
        request in flight and none arriving for ``idle_seconds`` is closed, so idle clients
        cannot keep handler threads (DEADLINE_EXCEEDED, naming the limit)."""
        stream = _StreamState(self.stream_window)
        with self._lock:
            if self._closing:  # admission refuses new calls first; this closes the gap
                context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            self._open.add(stream)

        def read():
            try:
                for request in request_iterator:
                    stream.window.acquire()
                    if not stream.received():
                        break  # closed as idle while this request was on its way
                    if request is MALFORMED:  # its own error; the stream goes on
                        stream.done.put((pb.ClassifyRequest(), BadRequest(
                            "malformed", "a request of this stream is not a valid "
                                         "ClassifyRequest message")))
                        continue
                    outcome = self._submit_item(request, context, in_stream=True)
                    if isinstance(outcome, ServingError):
                        stream.done.put((request, outcome))
                    else:
                        outcome.future.add_done_callback(
                            lambda _, r=request, p=outcome: stream.done.put((r, p)))
            except Exception:  # noqa: BLE001 - the client hung up, or gRPC ended the call
                log.debug("stream reader stopped", exc_info=True)
                stream.input_error = _ended_by(context)
            stream.done.put((None, None))  # end of input

        threading.Thread(target=read, name="stream-reader", daemon=True).start()

        def answers():
            while not (stream.owed() == 0 and (stream.input_ended or stream.shutting_down)):
                try:
                    request, item = stream.done.get(timeout=self.idle_seconds)
                except queue.Empty:
                    if stream.close_if_idle():
                        context.set_code(grpc.StatusCode.DEADLINE_EXCEEDED)
                        context.set_details(f"stream idle for {self.idle_seconds:g}s with no "
                                            "request in flight; closed by the server "
                                            "(stream_idle_seconds)")
                        return
                    continue
                if request is _SHUTDOWN:
                    stream.close()  # read no more; answer what was read
                    stream.shutting_down = True
                elif request is None:
                    stream.input_ended = True
                    if stream.input_error is None and stream.owed() == 0:
                        stream.input_error = _ended_by(context, wait=END_GRACE_SECONDS)
                else:
                    stream.answered += 1
                    yield self._stream_response(request, item, stream.window)
            if stream.shutting_down and not stream.input_ended:
                context.set_code(grpc.StatusCode.UNAVAILABLE)
                context.set_details("the server is shutting down: every request it read has "
                                    "its response; send the rest to another replica")
            elif stream.input_error is not None:
                context.set_code(stream.input_error)  # gRPC ended the call: not an OK stream

        pending = answers()
        try:
            for response in pending:  # noqa: UP028 - `yield from` would close `pending` with us
                yield response
        finally:  # the client left early: finish what is still in flight, so holds are released
            with self._lock:
                self._open.discard(stream)
            threading.Thread(target=collections.deque, args=(pending, 0), daemon=True,
                             name="stream-drain").start()

    def close_streams(self) -> None:
        """Shutdown: each open stream reads no more requests, answers those it read, and ends
        with UNAVAILABLE, so its client resends the rest to another replica."""
        with self._lock:
            self._closing = True
            for stream in self._open:
                stream.done.put((_SHUTDOWN, None))

    def _stream_response(self, request, item, window) -> pb.ClassifyResponse:
        try:
            return self._answer(request, item)
        finally:
            window.release()

    def _submit_item(self, request, context, in_stream: bool = False):
        """One request of a batch or a stream -> its Pending, or the ServingError that answers
        it; a bug becomes INTERNAL here, so that the other requests go on."""
        try:
            return self._submit(request, context, in_stream)
        except ServingError as exc:
            return exc
        except Exception:
            log.exception("request %s failed", request.request_id[:MAX_ID_CHARS])
            return ServingError("internal", INTERNAL_MESSAGE)

    def _answer(self, request, outcome) -> pb.ClassifyResponse:
        """The response to one request of a batch or a stream: its submit ``outcome`` finished,
        or the error it failed with."""
        try:
            if isinstance(outcome, ServingError):
                raise outcome
            return _response(*self.inference.finish(outcome))
        except ServingError as exc:
            return _error_response(request, status_of(exc), str(exc))
        except Exception:  # a bug in finishing: answer this request, the others go on
            log.exception("request %s failed", request.request_id[:MAX_ID_CHARS])
            return _error_response(request, grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    @answer_errors
    def GetModelInfo(self, request, context):
        spec = request.model
        servable = self.inference.servable(spec.name, spec.version or None, spec.label or None)
        card = servable.card
        manager = self.inference.manager
        return pb.ModelInfo(
            name=servable.name, version=servable.version,
            versions=manager.models().get(servable.name, []),
            labels=manager.labels().get(servable.name, {}),
            classes=card.labels, input_height=card.input.height, input_width=card.input.width,
            input_dtype="uint8", variant=card.quantization.primary if card.quantization else "",
            sha256=card.files[MODEL_FILE].sha256, cam_methods=list(METHODS),
            cam_head=card.cam.head if card.cam is not None else "")

    def _submit(self, request, context, in_stream: bool = False):
        kind = request.WhichOneof("input")
        tensor = None
        if kind == "tensor":
            t = request.tensor
            if len(t.shape) > 4:  # before any copy: a shape may hold millions of entries
                raise BadRequest("bad_tensor_shape", f"a tensor is [H, W, 3] or [1, H, W, 3]; "
                                                     f"got {len(t.shape):,} dimensions")
            tensor = (t.data, list(t.shape), t.dtype)
        explain = None
        if request.HasField("explain"):
            e = request.explain
            explain = Explain(method=e.method or "gradcam",
                              target=e.target_class if e.HasField("target_class") else None,
                              png=e.png_overlay or not e.raw_map, raw=e.raw_map)
        deadline = deadline_after(context.time_remaining())
        spec = request.model
        if spec.version < 0:
            raise BadRequest("bad_version", f"model version must be positive; got {spec.version}")
        return self.inference.submit(
            request_id=request.request_id, name=spec.name, version=spec.version or None,
            label=spec.label or None,
            image=request.image if kind == "image" else None, tensor=tensor,
            top_k=request.top_k if request.HasField("top_k") else None, explain=explain,
            deadline=deadline,
            # A stream's callbacks would pile up for its whole life; its requests run out.
            on_cancel=None if in_stream else cancel_when_call_ends(context),
            metadata=dict(context.invocation_metadata()) if self.inference.routes else None)


class _StreamState:
    """One ClassifyStream's bookkeeping, shared by its reader thread and its writer."""

    def __init__(self, window: int):
        self.window = threading.BoundedSemaphore(window)  # requests in flight at once
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (request, outcome); (None, None): end
        self.answered = 0  # written by the writer only
        self.input_ended = False
        self.shutting_down = False
        self.input_error: grpc.StatusCode | None = None
        self._received = 0
        self._closed = False
        self._lock = threading.Lock()

    def received(self) -> bool:
        """Count a request that arrived; False once the stream was closed as idle."""
        with self._lock:
            if not self._closed:
                self._received += 1
            return not self._closed

    def owed(self) -> int:
        with self._lock:
            return self._received - self.answered

    def close_if_idle(self) -> bool:
        with self._lock:
            if self._received == self.answered:
                self._closed = True
            return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True


def _ended_by(context, wait: float = 0.0) -> grpc.StatusCode | None:
    """CANCELLED if gRPC ended the call under the handler (an oversized message, a reset), else
    None. gRPC's Python layer first sees an oversized message as the end of the input, and the
    cancellation only just after, so a caller may ``wait`` that long for it."""
    deadline = time.monotonic() + wait
    while context.is_active():
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)
    return grpc.StatusCode.CANCELLED


def _ended(context) -> ServingError:
    """Why a unary call ended under its handler: its deadline passed, or its client left."""
    if context.time_remaining() <= 0:
        return DeadlineExceeded("deadline", "the call's deadline passed")
    return Cancelled("cancelled", "the client cancelled the call")


def _error_response(request, code: grpc.StatusCode, message: str) -> pb.ClassifyResponse:
    """A batch's or a stream's answer to one failed request; an over-long id is refused, so
    not echoed whole."""
    return pb.ClassifyResponse(request_id=request.request_id[:MAX_ID_CHARS],
                               error=pb.Error(code=code.value[0], message=message))


def _response(result: Result, top_k: int) -> pb.ClassifyResponse:
    t = result.timing
    response = pb.ClassifyResponse(
        classes=[pb.Class(index=i, label=label, score=score)
                 for i, label, score in result.top(top_k)],
        model_name=result.model_name, model_version=result.model_version,
        request_id=result.request_id, experiment=result.experiment, variant=result.variant,
        feedback_id=result.feedback_id,
        timing=pb.Timing(decode_seconds=t.decode_seconds, queue_seconds=t.queue_seconds,
                         inference_seconds=t.inference_seconds,
                         explain_seconds=t.explain_seconds, total_seconds=t.total_seconds))
    if result.heatmap is not None:
        h = result.heatmap
        response.heatmap.method = h.method
        response.heatmap.target_class = h.target
        if h.png is not None:
            response.heatmap.png = h.png
        if h.raw is not None:
            response.heatmap.shape.extend(h.raw.shape)
            response.heatmap.raw = h.raw.astype("<f4").tobytes()
    return response
