"""The Open Inference Protocol v2 (``inference.GRPCInferenceService``) over the same path.

Triton's and KServe's clients work unchanged. A model takes ONE input tensor, any name:
- ``BYTES`` of shape [N]: N encoded images (JPEG, PNG, WebP, BMP, GIF), decoded like Classify's;
- ``UINT8`` or ``FP32`` of shape [N, H, W, 3] (or [H, W, 3]): raw pixels at the model's size.
Outputs: ``probabilities`` FP32 [N, K]. With the request parameter ``cam_method`` (a CAM method
name, and optionally ``target_class``) also ``heatmap`` FP32 [N, H, W] in [0, 1]. Requesting
``probabilities`` with the parameter ``classification: k`` returns Triton's classification
extension instead: BYTES [N, k] of ``"score:index:label"``.
"""

from __future__ import annotations

import struct
from importlib import metadata

import numpy as np

from serving.errors import BadRequest, ServingError, answer_errors
from serving.inference import Explain, Inference, deadline_after
from serving.protos_gen.inference import grpc_predict_v2_pb2 as pb
from serving.protos_gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["InferenceService", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PIXEL_TYPES = {"UINT8": ("uint8", "uint_contents"), "FP32": ("float32", "fp32_contents")}


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, inference: Inference, live=lambda: True):
        self.inference = inference
        self.live = live

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.live())

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.inference.manager.ready())

    def ModelReady(self, request, context):
        try:
            self._servable(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="sightline", version=_version(),
                                         extensions=["classification"])

    @answer_errors
    def ModelMetadata(self, request, context):
        servable = self._servable(request.name, request.version)
        card = servable.card
        h, w, k = card.input.height, card.input.width, card.num_classes
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=servable.name, platform="tflite",
            versions=[str(v) for v in self.inference.manager.models().get(servable.name, [])],
            inputs=[tensor(name="image", datatype="BYTES", shape=[-1]),
                    tensor(name="pixels", datatype="UINT8", shape=[-1, h, w, 3])],
            outputs=[tensor(name="probabilities", datatype="FP32", shape=[-1, k]),
                     tensor(name="heatmap", datatype="FP32", shape=[-1, h, w])])

    @answer_errors
    def ModelInfer(self, request, context):
        servable = self._servable(request.model_name, request.model_version)
        card = servable.card
        items = _inputs(request, card.input.height, card.input.width)
        explain = _explain(request.parameters)
        classification = _classification(request)
        deadline = deadline_after(context.time_remaining())
        pending = []  # all queued before any is awaited: one request's images share batches
        try:
            for index, item in enumerate(items):
                try:
                    pending.append(self.inference.submit(
                        name=servable.name, version=servable.version, deadline=deadline,
                        explain=explain, **item))
                except BadRequest as exc:
                    raise BadRequest(exc.reason, f"input {index}: {exc}") from None
        finally:
            results = [self._finish(p) for p in pending]
        if any(isinstance(r, ServingError) for r in results):
            raise next(r for r in results if isinstance(r, ServingError))
        response = pb.ModelInferResponse(model_name=servable.name, id=request.id,
                                         model_version=str(servable.version))
        wanted = {o.name for o in request.outputs} or {"probabilities", "heatmap"}
        if "probabilities" in wanted:
            if classification:
                _add_classification(response, results, classification, card.num_classes)
            else:
                probabilities = np.stack([r.probabilities for r in results]).astype("<f4")
                _add(response, "probabilities", "FP32", probabilities.shape,
                     probabilities.tobytes())
        if explain is not None and "heatmap" in wanted:
            maps = np.stack([r.heatmap.raw for r in results]).astype("<f4")
            _add(response, "heatmap", "FP32", maps.shape, maps.tobytes())
        return response

    def _finish(self, pending):
        try:
            return self.inference.finish(pending)[0]
        except ServingError as exc:
            return exc

    def _servable(self, name: str, version: str):
        if version and not version.isdigit():
            raise BadRequest("bad_version", f"model_version must be a positive integer; "
                                            f"got {version!r}")
        return self.inference.servable(name, int(version) if version else None)


def _inputs(request, height: int, width: int) -> list[dict]:
    if len(request.inputs) != 1:
        raise BadRequest("bad_inputs", f"the model takes one input tensor; got "
                                       f"{len(request.inputs)}")
    tensor = request.inputs[0]
    raw = request.raw_input_contents[0] if request.raw_input_contents else None
    shape = list(tensor.shape)
    if tensor.datatype == "BYTES":
        if len(shape) != 1:
            raise BadRequest("bad_tensor_shape", f"a BYTES input is a list of encoded images, "
                                                 f"shape [N]; got {shape}")
        images = _split_bytes(raw) if raw is not None else list(tensor.contents.bytes_contents)
        if len(images) != shape[0]:
            raise BadRequest("bad_tensor_size", f"shape says {shape[0]} images; the contents "
                                                f"hold {len(images)}")
        return [{"image": image} for image in images]
    if tensor.datatype not in PIXEL_TYPES:
        raise BadRequest("bad_tensor_dtype", f"input datatype must be BYTES, UINT8 or FP32; "
                                             f"got {tensor.datatype!r}")
    dtype, field = PIXEL_TYPES[tensor.datatype]
    if raw is None:
        raw = np.asarray(getattr(tensor.contents, field), dtype=dtype).tobytes()
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or shape[0] < 1:
        raise BadRequest("bad_tensor_shape", f"pixels must be [N, {height}, {width}, 3]; "
                                             f"got {list(tensor.shape)}")
    per_image = len(raw) // shape[0] if len(raw) % shape[0] == 0 else -1
    if per_image < 0:
        raise BadRequest("bad_tensor_size", f"{len(raw)} bytes do not split into {shape[0]} "
                                            "images")
    return [{"tensor": (raw[i * per_image:(i + 1) * per_image], shape[1:], dtype)}
            for i in range(shape[0])]


def _split_bytes(raw: bytes) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length + the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest("bad_tensor_size", "BYTES contents end inside a length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest("bad_tensor_size", f"a BYTES element claims {size} bytes; only "
                                                f"{len(raw) - offset} remain")
        items.append(raw[offset:offset + size])
        offset += size
    return items


def _explain(parameters) -> Explain | None:
    if "cam_method" not in parameters:
        return None
    method = parameters["cam_method"].string_param
    target = parameters["target_class"].int64_param if "target_class" in parameters else None
    return Explain(method=method, target=target, png=False, raw=True)


def _classification(request) -> int:
    for output in request.outputs:
        if output.name == "probabilities" and "classification" in output.parameters:
            k = output.parameters["classification"].int64_param
            if k < 1:
                raise BadRequest("bad_top_k", f"classification must be >= 1; got {k}")
            return k
    return 0


def _add(response, name: str, datatype: str, shape, data: bytes) -> None:
    response.outputs.add(name=name, datatype=datatype, shape=list(shape))
    response.raw_output_contents.append(data)


def _add_classification(response, results, k: int, classes: int) -> None:
    if k > classes:
        raise BadRequest("bad_top_k", f"classification {k} exceeds the model's {classes} classes")
    rows = [[f"{score:f}:{index}:{label}".encode() for index, label, score in r.top(k)]
            for r in results]
    data = b"".join(struct.pack("<I", len(s)) + s for row in rows for s in row)
    _add(response, "probabilities", "BYTES", (len(results), k), data)


def _version() -> str:
    try:
        return metadata.version("sightline")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
