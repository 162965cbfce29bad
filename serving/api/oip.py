"""The Open Inference Protocol v2 (``inference.GRPCInferenceService``) over the same path.

Triton's and KServe's clients work unchanged. A model takes ONE input tensor, any name:
- ``BYTES`` of shape [N]: N encoded images (JPEG, PNG, WebP, BMP, GIF), decoded like Classify's;
- ``UINT8`` or ``FP32`` of shape [N, H, W, 3] (or [H, W, 3]): raw pixels at the model's size.
Outputs: ``probabilities`` FP32 [N, K]. With the request parameter ``cam_method`` (a CAM method
name, and optionally ``target_class``) also ``heatmap`` FP32 [N, H, W] in [0, 1]. Requesting
``probabilities`` with the parameter ``classification: k`` returns Triton's classification
extension instead: BYTES [N, k] of ``"score:index:label"``. The request parameter
``model_label`` names a version label (labels.json) instead of ``model_version``. The response's
``id`` is the request's, or the one the data plane made when it had none. A request an A/B
experiment routed also gets the parameters ``experiment``, ``variant`` and ``feedback_id`` (the
signed id for its first image's late label) and the headers ``sightline-experiment`` and
``sightline-variant``; it counts as one request, whatever its image count.

Every field is checked strictly, and the shape against the bytes the request holds, before any
per-image work: docs/limits.md has the table, tests/serving/api/test_oip_bad_input.py its cases.
"""

from __future__ import annotations

import re
import struct
from importlib import metadata

import numpy as np

from serving.api.status import answer_errors, cancel_when_call_ends
from serving.errors import BadRequest, ServingError, shown
from serving.inference.dataplane import Inference
from serving.inference.types import Explain, deadline_after, request_id_for
from serving.protos_gen.inference import grpc_predict_v2_pb2 as pb
from serving.protos_gen.inference import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["InferenceService", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
PIXEL_TYPES = {"UINT8": ("uint8", "uint_contents"), "FP32": ("float32", "fp32_contents")}
OUTPUTS = ("probabilities", "heatmap")
PARAMETER_KINDS = {"string_param": "a string", "int64_param": "an integer"}
VERSION = re.compile(r"[1-9][0-9]{0,17}")  # ASCII only: re's [0-9], unlike \d, is not Unicode


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, inference: Inference, max_images: int = 64):
        self.inference = inference
        self.max_images = max_images  # images in one ModelInfer (max_request_images)

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.inference.manager.ready())

    @answer_errors
    def ModelReady(self, request, context):
        version = _version_number(request.version)  # malformed: INVALID_ARGUMENT, not "no"
        try:
            self.inference.servable(request.name, version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="sightline", version=_version(),
                                         extensions=["classification"])

    @answer_errors
    def ModelMetadata(self, request, context):
        servable = self.inference.servable(request.name, _version_number(request.version))
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

    @answer_errors(count=True)
    def ModelInfer(self, request, context):
        # Every field is checked against the request's own bytes before anything is allocated
        # per image or queued (docs/limits.md).
        rid = request_id_for(request.id)  # one id (so one variant) for all its images
        version, label = _version_number(request.model_version), _label(request.parameters)
        servable = self.inference.servable(request.model_name, version, label)
        card = servable.card
        explain = _explain(request.parameters)
        wanted, classification = _outputs(request.outputs, explain, card.num_classes)
        items = _inputs(request, card.input.height, card.input.width, self.max_images)
        deadline = deadline_after(context.time_remaining())
        metadata = dict(context.invocation_metadata()) if self.inference.routes else None
        pending = []  # all queued before any is awaited: one request's images share batches
        try:
            for index, item in enumerate(items):
                try:
                    pending.append(self.inference.submit(
                        request_id=rid, name=request.model_name, version=version,
                        label=label, deadline=deadline, explain=explain,
                        metadata=metadata, count=index == 0,
                        on_cancel=cancel_when_call_ends(context), **item))
                except BadRequest as exc:
                    raise BadRequest(exc.reason, f"input {index}: {exc}") from None
        finally:
            results = [self._finish(p) for p in pending]
        if any(isinstance(r, ServingError) for r in results):
            raise next(r for r in results if isinstance(r, ServingError))
        answered = results[0]  # one id, so one variant, for all the request's images
        response = pb.ModelInferResponse(model_name=answered.model_name, id=rid,
                                         model_version=str(answered.model_version))
        if answered.variant:  # counted once, as one request, by its first image
            response.parameters["experiment"].string_param = answered.experiment
            response.parameters["variant"].string_param = answered.variant
            response.parameters["feedback_id"].string_param = answered.feedback_id
            context.send_initial_metadata((("sightline-experiment", answered.experiment),
                                           ("sightline-variant", answered.variant)))
        if "probabilities" in wanted:
            if classification:
                _add_classification(response, results, classification)
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


def _version_number(version: str) -> int | None:
    """OIP versions are strings: empty (the newest) or a positive decimal integer, in ASCII
    digits only (``str.isdigit`` also takes "²" and Arabic-Indic digits)."""
    if not version:
        return None
    if not VERSION.fullmatch(version):
        raise BadRequest("bad_version", f"model_version must be a positive integer of at most "
                                        f"18 digits; got {shown(version)}")
    return int(version)


def _inputs(request, height: int, width: int, max_images: int) -> list[dict]:
    """The one input tensor -> one submit() argument dict per image. Shape, element count and
    byte count are checked against what the request actually holds before any per-image work:
    a 31-byte request must not be able to claim three million images."""
    if len(request.inputs) != 1:
        raise BadRequest("bad_inputs", f"the model takes one input tensor; got "
                                       f"{len(request.inputs)}")
    raws = request.raw_input_contents
    if len(raws) > 1:
        raise BadRequest("bad_inputs", f"raw_input_contents holds {len(raws)} entries for one "
                                       "input tensor")
    tensor = request.inputs[0]
    raw = raws[0] if raws else None
    filled = [f.name for f, _ in tensor.contents.ListFields()]
    if raw is not None and filled:
        raise BadRequest("bad_inputs", "give the input in raw_input_contents or in contents, "
                                       "not both")
    if len(tensor.shape) > 4:  # before any copy: a shape may hold millions of entries
        raise BadRequest("bad_tensor_shape", f"an input is [N] (BYTES) or [N, H, W, 3]; got "
                                             f"{len(tensor.shape):,} dimensions")
    shape = list(tensor.shape)
    if tensor.datatype == "BYTES":
        count = _image_count(shape, 1, "a BYTES input is a list of encoded images, shape [N]",
                             max_images)
        _only_field(filled, "bytes_contents", "BYTES")
        images = (_split_bytes(raw, count) if raw is not None
                  else list(tensor.contents.bytes_contents))
        if len(images) != count:
            raise BadRequest("bad_tensor_size", f"shape says {count} images; the contents "
                                                f"hold {len(images)}")
        return [{"image": image} for image in images]
    if tensor.datatype not in PIXEL_TYPES:
        raise BadRequest("bad_tensor_dtype", f"input datatype must be BYTES, UINT8 or FP32; "
                                             f"got {shown(tensor.datatype)}")
    dtype, field = PIXEL_TYPES[tensor.datatype]
    if len(shape) == 3:
        shape = [1, *shape]
    expected = f"pixels must be [N, {height}, {width}, 3] or [{height}, {width}, 3]"
    if len(shape) != 4 or shape[1:] != [height, width, 3]:
        raise BadRequest("bad_tensor_shape", f"{expected}; got {shown(list(tensor.shape))}")
    count = _image_count(shape, 4, expected, max_images)
    elements = count * height * width * 3
    if raw is None:
        _only_field(filled, field, tensor.datatype)
        values = getattr(tensor.contents, field)
        if len(values) != elements:
            raise BadRequest("bad_tensor_size", f"shape {shape} needs {elements:,} values in "
                                                f"{field}; got {len(values):,}")
        raw = _pixel_contents(values, dtype, tensor.datatype)
    itemsize = np.dtype(dtype).itemsize
    if len(raw) != elements * itemsize:
        raise BadRequest("bad_tensor_size", f"a {tensor.datatype} tensor of shape {shape} needs "
                                            f"{elements * itemsize:,} bytes; got {len(raw):,}")
    per_image = height * width * 3 * itemsize
    return [{"tensor": (raw[i * per_image:(i + 1) * per_image], shape[1:], dtype)}
            for i in range(count)]


def _image_count(shape: list[int], rank: int, expected: str, max_images: int) -> int:
    if len(shape) != rank:
        raise BadRequest("bad_tensor_shape", f"{expected}; got {shown(shape)}")
    count = shape[0]
    if count < 1:
        raise BadRequest("bad_tensor_shape", f"{expected} with N >= 1; got N = {count}")
    if count > max_images:
        raise BadRequest("too_many_images", f"{count:,} images in one request; this server "
                                            f"takes at most {max_images} (max_request_images)")
    return count


def _only_field(filled: list[str], field: str, datatype: str) -> None:
    stray = [name for name in filled if name != field]
    if stray:
        raise BadRequest("bad_tensor_dtype", f"a {datatype} input's contents go in {field}; "
                                             f"got {', '.join(stray)}")


def _pixel_contents(values, dtype: str, datatype: str) -> bytes:
    """Typed contents -> raw bytes, refusing values the datatype cannot hold (uint_contents is
    uint32 on the wire; 256 must not wrap to 0)."""
    if dtype == "uint8":
        wide = np.asarray(values, dtype=np.uint32)
        if wide.size and int(wide.max()) > 255:
            raise BadRequest("out_of_range", f"uint_contents value {int(wide.max())} does not "
                                             f"fit {datatype} (0-255)")
        return wide.astype(np.uint8).tobytes()
    return np.asarray(values, dtype="<f4").tobytes()


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length + the bytes.
    Stops at ``count`` elements; bytes left over are an error, not more images."""
    items, offset = [], 0
    while offset < len(raw) and len(items) < count:
        if offset + 4 > len(raw):
            raise BadRequest("bad_tensor_size", "BYTES contents end inside a length prefix")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest("bad_tensor_size", f"a BYTES element claims {size:,} bytes; only "
                                                f"{len(raw) - offset:,} remain")
        items.append(raw[offset:offset + size])
        offset += size
    if offset < len(raw):
        raise BadRequest("bad_tensor_size", f"shape says {count} images; "
                                            f"{len(raw) - offset:,} bytes follow the last")
    return items


def _parameter(parameters, name: str, kind: str):
    """A request parameter of the one kind it may have (``string_param``...), or None."""
    if name not in parameters:
        return None
    given = parameters[name].WhichOneof("parameter_choice")
    if given != kind:
        raise BadRequest("bad_parameter", f"parameter {name} must be {PARAMETER_KINDS[kind]} "
                                          f"({kind}); got {given or 'no value'}")
    return getattr(parameters[name], kind)


def _label(parameters) -> str | None:
    """The ``model_label`` parameter: a version label (labels.json), in place of a version."""
    return _parameter(parameters, "model_label", "string_param") or None


def _explain(parameters) -> Explain | None:
    method = _parameter(parameters, "cam_method", "string_param")
    target = _parameter(parameters, "target_class", "int64_param")
    if method is None:
        if target is not None:
            raise BadRequest("bad_parameter", "target_class needs the cam_method parameter")
        return None
    return Explain(method=method, target=target, png=False, raw=True)


def _outputs(outputs, explain: Explain | None, classes: int) -> tuple[set[str], int]:
    """-> (the output names wanted, the classification k or 0)."""
    wanted, k = set(), 0
    for output in outputs:
        if output.name not in OUTPUTS:
            raise BadRequest("bad_output", f"unknown output {shown(output.name)}; outputs: "
                                           f"{', '.join(OUTPUTS)}")
        if output.name == "heatmap" and explain is None:
            raise BadRequest("bad_output", "the heatmap output needs the cam_method parameter")
        wanted.add(output.name)
        if output.name == "probabilities":
            k = _parameter(output.parameters, "classification", "int64_param") or k
            if "classification" in output.parameters and not 1 <= k <= classes:
                raise BadRequest("bad_top_k", f"classification must be between 1 and the "
                                              f"model's {classes} classes; got {k}")
    return wanted or set(OUTPUTS), k


def _add(response, name: str, datatype: str, shape, data: bytes) -> None:
    response.outputs.add(name=name, datatype=datatype, shape=list(shape))
    response.raw_output_contents.append(data)


def _add_classification(response, results, k: int) -> None:
    rows = [[f"{score:f}:{index}:{label}".encode() for index, label, score in r.top(k)]
            for r in results]
    data = b"".join(struct.pack("<I", len(s)) + s for row in rows for s in row)
    _add(response, "probabilities", "BYTES", (len(results), k), data)


def _version() -> str:
    try:
        return metadata.version("sightline")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"
