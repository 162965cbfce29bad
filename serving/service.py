"""``sightline.classifier.v1.ImageClassifier``: Classify, ClassifyStream and GetModelInfo.

Translates messages to ``Inference.run`` calls and results back; every ``ServingError`` leaves
with its status code (``serving.errors``) and a message naming the problem. In a stream a bad
request gets an error response of its own and the stream goes on.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import uuid

import grpc

from serving.errors import (
    INTERNAL_MESSAGE,
    BadRequest,
    ServingError,
    answer_errors,
    status_of,
)
from serving.inference import Explain, Inference, Result, deadline_after
from serving.pipeline.cam import METHODS
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

__all__ = ["ClassifierService", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ImageClassifier"].full_name
log = logging.getLogger("sightline.service")


class ClassifierService(pb_grpc.ImageClassifierServicer):
    def __init__(self, inference: Inference, stream_window: int = 64):
        self.inference = inference
        self.stream_window = stream_window  # requests of one stream in flight at once

    @answer_errors
    def Classify(self, request, context):
        result, top_k = self.inference.finish(self._submit(request, context))
        return _response(result, top_k, request.request_id or uuid.uuid4().hex)

    def ClassifyStream(self, request_iterator, context):
        """A reader thread decodes and queues each request as it arrives (up to stream_window
        in flight), so one stream fills batches; responses leave in completion order. Every
        request yields exactly one response, an error response included."""
        done: queue.SimpleQueue = queue.SimpleQueue()
        window = threading.BoundedSemaphore(self.stream_window)

        def read():
            count = 0
            try:
                for request in request_iterator:
                    window.acquire()
                    count += 1
                    try:
                        pending = self._submit(request, context, in_stream=True)
                    except ServingError as exc:
                        done.put((request, exc))
                        continue
                    except Exception:  # a bug: answer this request, keep the stream going
                        log.exception("ClassifyStream request failed")
                        done.put((request, ServingError("internal", INTERNAL_MESSAGE)))
                        continue
                    pending.future.add_done_callback(
                        lambda _, r=request, p=pending: done.put((r, p)))
            except Exception:  # noqa: BLE001 - the client hung up mid-stream
                log.debug("stream reader stopped", exc_info=True)
            done.put((None, count))  # end of input: how many responses are owed in all

        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        answered = [0, None]  # responses built, responses owed (known once the input ended)

        def answers():
            while answered[1] is None or answered[0] < answered[1]:
                request, item = done.get()
                if request is None:
                    answered[1] = item
                    continue
                answered[0] += 1
                yield self._stream_response(request, item, window)

        pending = answers()
        try:
            for response in pending:  # noqa: UP028 - `yield from` would close `pending` with us
                yield response
        finally:  # the client left early: finish what is still in flight, so holds are released
            threading.Thread(target=collections.deque, args=(pending, 0), daemon=True,
                             name="stream-drain").start()

    def _stream_response(self, request, item, window) -> pb.ClassifyResponse:
        try:
            if isinstance(item, ServingError):
                raise item
            result, top_k = self.inference.finish(item)
            return _response(result, top_k, request.request_id or uuid.uuid4().hex)
        except ServingError as exc:
            return pb.ClassifyResponse(request_id=request.request_id, error=pb.Error(
                code=_code(exc).value[0], message=str(exc)))
        except Exception:  # a bug in finishing: answer this request, keep the stream going
            log.exception("ClassifyStream request failed")
            return pb.ClassifyResponse(request_id=request.request_id, error=pb.Error(
                code=grpc.StatusCode.INTERNAL.value[0], message=INTERNAL_MESSAGE))
        finally:
            window.release()

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
            input_dtype="uint8", variant=card.quantization.get("primary", ""),
            sha256=card.files["model.tflite"]["sha256"], cam_methods=list(METHODS),
            cam_head=card.model.get("cam", {}).get("head", ""))

    def _submit(self, request, context, in_stream: bool = False):
        kind = request.WhichOneof("input")
        tensor = None
        if kind == "tensor":
            t = request.tensor
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
            name=spec.name, version=spec.version or None, label=spec.label or None,
            image=request.image if kind == "image" else None, tensor=tensor,
            top_k=request.top_k if request.HasField("top_k") else None, explain=explain,
            deadline=deadline,
            # A stream's callbacks would pile up for its whole life; its requests run out.
            on_cancel=None if in_stream else context.add_callback)


def _code(error: ServingError) -> grpc.StatusCode:
    """The error's status; INTERNAL for the bare ServingError a bug is wrapped in."""
    return grpc.StatusCode.INTERNAL if type(error) is ServingError else status_of(error)


def _response(result: Result, top_k: int, request_id: str) -> pb.ClassifyResponse:
    t = result.timing
    response = pb.ClassifyResponse(
        classes=[pb.Class(index=i, label=label, score=score)
                 for i, label, score in result.top(top_k)],
        model_name=result.model_name, model_version=result.model_version, request_id=request_id,
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
