"""Bad requests to the Open Inference Protocol, through a real server: the right status, a short
message naming the problem, nothing allocated per claimed image, and the server keeps serving.

CASES is the field audit of ModelInferRequest (docs/limits.md): every field has a case for each
class it can fail in — range, datatype fit, strict parsing, length. A new field gets its rows.
"""

import resource
import struct
import time

import grpc
import numpy as np
import pytest

from serving.protos_gen.inference import grpc_predict_v2_pb2 as oip
from serving.protos_gen.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from tests.serving.conftest import MODEL, expect_error, image_bytes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
LONG = "x" * 200_000
PIXELS = bytes(32 * 32 * 3)


def infer(datatype="UINT8", shape=(1, 32, 32, 3), raw=PIXELS, contents=None, inputs=1,
          raws=None, outputs=(), parameters=None, **fields) -> oip.ModelInferRequest:
    """A ModelInferRequest that is good unless a keyword makes it bad."""
    request = oip.ModelInferRequest(**{"model_name": MODEL, **fields})
    for _ in range(inputs):
        tensor = request.inputs.add(name="pixels", datatype=datatype, shape=list(shape))
        for field, values in (contents or {}).items():
            getattr(tensor.contents, field).extend(values)
    if raws is not None:
        request.raw_input_contents.extend(raws)
    elif raw is not None and inputs:
        request.raw_input_contents.append(raw)
    for name, output_parameters in outputs:
        output = request.outputs.add(name=name)
        for key, value in output_parameters.items():
            _set(output.parameters[key], value)
    for key, value in (parameters or {}).items():
        _set(request.parameters[key], value)
    return request


def _set(parameter, value) -> None:
    kind = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
    setattr(parameter, kind, value)


def triton_bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


PNG = image_bytes()

CASES = {
    # model_name, model_version: length, strict parsing
    "model name long": (infer(model_name=LONG), INVALID, "at most 128"),
    "unknown model": (infer(model_name="nope"), NOT_FOUND, "no model 'nope'"),
    "version superscript two": (infer(model_version="²"), INVALID, "got '²'"),
    "version Arabic-Indic digit": (infer(model_version="٣"), INVALID, "positive integer"),
    "version zero": (infer(model_version="0"), INVALID, "positive integer"),
    "version negative": (infer(model_version="-1"), INVALID, "positive integer"),
    "version with spaces": (infer(model_version=" 1"), INVALID, "positive integer"),
    "version decimal": (infer(model_version="1.0"), INVALID, "positive integer"),
    "version 19 digits": (infer(model_version="1" * 19), INVALID, "at most 18 digits"),
    "version long": (infer(model_version=LONG), INVALID, "200,000 long"),
    "unknown version": (infer(model_version="9"), NOT_FOUND, "has no version 9"),
    # id: length
    "id long": (infer(id=LONG), INVALID, "id is 200,000 characters; at most 128"),
    # inputs and raw_input_contents: count
    "no input": (infer(inputs=0), INVALID, "one input tensor; got 0"),
    "two inputs": (infer(inputs=2, raws=[PIXELS, PIXELS]), INVALID, "one input tensor; got 2"),
    "two raw contents": (infer(raws=[PIXELS, PIXELS]), INVALID, "2 entries for one input"),
    "raw and contents": (infer(contents={"uint_contents": [0] * 3072}), INVALID, "not both"),
    # datatype: allow-list, exact spelling, length
    "datatype INT8": (infer(datatype="INT8"), INVALID, "got 'INT8'"),
    "datatype lower case": (infer(datatype="uint8"), INVALID, "got 'uint8'"),
    "datatype long": (infer(datatype=LONG), INVALID, "200,000 long"),
    # shape: rank, dims, range of N, the batch limit, checked before any per-image work
    "31 bytes claiming 3,000,000 images": (infer(shape=(3_000_000, 32, 32, 3), raw=None),
                                           INVALID, "3,000,000 images in one request"),
    "65 images": (infer(shape=(65, 32, 32, 3), raw=PIXELS * 65), INVALID,
                  "at most 64 (max_request_images)"),
    "N zero": (infer(shape=(0, 32, 32, 3), raw=b""), INVALID, "N >= 1"),
    "N negative": (infer(shape=(-1, 32, 32, 3)), INVALID, "N >= 1"),
    "rank 2": (infer(shape=(32, 96)), INVALID, "pixels must be [N, 32, 32, 3]"),
    "wrong size": (infer(shape=(1, 16, 16, 3), raw=bytes(768)), INVALID, "got [1, 16, 16, 3]"),
    "four channels": (infer(shape=(1, 32, 32, 4)), INVALID, "pixels must be"),
    "huge dims": (infer(shape=(1, 2**62, 2**62, 3)), INVALID, "pixels must be"),
    "100,000 dims": (infer(shape=[1] * 100_000), INVALID, "got 100,000 dimensions"),
    "rank 5": (infer(shape=(1, 1, 32, 32, 3)), INVALID, "got 5 dimensions"),
    "rank 3 of the wrong size": (infer(shape=(16, 16, 3), raw=bytes(768)), INVALID,
                                 "got [16, 16, 3]"),
    # contents: element count, byte count, the field of the datatype, datatype fit, values
    "raw short": (infer(raw=PIXELS[:-1]), INVALID, "needs 3,072 bytes; got 3,071"),
    "raw long": (infer(raw=PIXELS + b"\0"), INVALID, "needs 3,072 bytes; got 3,073"),
    "raw empty for 64 images": (infer(shape=(64, 32, 32, 3), raw=b""), INVALID,
                                "needs 196,608 bytes; got 0"),
    "uint contents empty for 64": (infer(shape=(64, 32, 32, 3), raw=None), INVALID,
                                   "needs 196,608 values in uint_contents; got 0"),
    "uint contents 256": (infer(raw=None, contents={"uint_contents": [256] + [0] * 3071}),
                          INVALID, "256 does not fit UINT8"),
    "uint contents 2**32-1": (infer(raw=None, contents={"uint_contents": [2**32 - 1] * 3072}),
                              INVALID, "4294967295 does not fit UINT8"),
    "contents in the wrong field": (infer(raw=None, contents={"int_contents": [0] * 3072}),
                                    INVALID, "contents go in uint_contents; got int_contents"),
    "fp32 contents NaN": (infer(datatype="FP32", raw=None,
                                contents={"fp32_contents": [float("nan")] * 3072}),
                          INVALID, "NaN"),
    "fp32 contents above 255": (infer(datatype="FP32", raw=None,
                                      contents={"fp32_contents": [256.0] * 3072}),
                                INVALID, "255"),
    "fp32 raw of uint8 size": (infer(datatype="FP32"), INVALID, "needs 12,288 bytes"),
    # BYTES inputs: rank, count against contents, Triton's length prefixes
    "bytes rank 2": (infer(datatype="BYTES", shape=(1, 1), raw=triton_bytes(PNG)), INVALID,
                     "shape [N]"),
    "bytes fewer than shape": (infer(datatype="BYTES", shape=(2,), raw=triton_bytes(PNG)),
                               INVALID, "shape says 2 images; the contents hold 1"),
    "bytes more than shape": (infer(datatype="BYTES", shape=(1,), raw=triton_bytes(PNG, PNG)),
                              INVALID, "bytes follow the last"),
    "bytes prefix past the end": (infer(datatype="BYTES", shape=(1,),
                                        raw=struct.pack("<I", 10**9) + b"abc"),
                                  INVALID, "claims 1,000,000,000 bytes"),
    "bytes cut in a prefix": (infer(datatype="BYTES", shape=(2,), raw=triton_bytes(PNG) + b"\1"),
                              INVALID, "inside a length prefix"),
    "bytes 100,000 claimed": (infer(datatype="BYTES", shape=(100_000,), raw=b""), INVALID,
                              "100,000 images in one request"),
    "bytes contents count": (infer(datatype="BYTES", shape=(2,), raw=None,
                                   contents={"bytes_contents": [PNG]}), INVALID,
                             "shape says 2 images"),
    "bytes not an image": (infer(datatype="BYTES", shape=(1,), raw=triton_bytes(b"nope")),
                           INVALID, "input 0"),
    # request parameters: type, range, dependencies
    "cam_method as int": (infer(parameters={"cam_method": 3}), INVALID,
                          "cam_method must be a string (string_param); got int64_param"),
    "cam_method unknown": (infer(parameters={"cam_method": "smoothgrad"}), INVALID,
                           "unknown CAM method 'smoothgrad'"),
    "cam_method long": (infer(parameters={"cam_method": LONG}), INVALID, "200,000 long"),
    "target_class as string": (infer(parameters={"cam_method": "gradcam", "target_class": "2"}),
                               INVALID, "target_class must be an integer"),
    "target_class alone": (infer(parameters={"target_class": 2}), INVALID, "needs the cam_method"),
    "target_class too large": (infer(parameters={"cam_method": "gradcam", "target_class": 6}),
                               INVALID, "between 0 and 5; got 6"),
    "target_class negative": (infer(parameters={"cam_method": "gradcam", "target_class": -1}),
                              INVALID, "got -1"),
    # outputs: names, parameters, dependencies
    "unknown output": (infer(outputs=[("logits", {})]), INVALID, "unknown output 'logits'"),
    "output name long": (infer(outputs=[(LONG, {})]), INVALID, "200,000 long"),
    "heatmap without cam_method": (infer(outputs=[("heatmap", {})]), INVALID,
                                   "needs the cam_method"),
    "classification zero": (infer(outputs=[("probabilities", {"classification": 0})]), INVALID,
                            "between 1 and the model's 6 classes; got 0"),
    "classification too large": (infer(outputs=[("probabilities", {"classification": 7})]),
                                 INVALID, "got 7"),
    "classification as string": (infer(outputs=[("probabilities", {"classification": "2"})]),
                                 INVALID, "classification must be an integer"),
}


@pytest.fixture(scope="module")
def oip_stub(shared_channel):
    return oip_grpc.GRPCInferenceServiceStub(shared_channel)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_infer_request_gets_a_clear_error_and_the_server_keeps_serving(oip_stub, case):
    request, code, phrase = CASES[case]
    with expect_error(code, phrase):
        oip_stub.ModelInfer(request, timeout=20)
    response = oip_stub.ModelInfer(infer(), timeout=20)
    assert response.outputs[0].name == "probabilities" and response.outputs[0].shape == [1, 6]


def test_a_31_byte_request_claiming_millions_of_images_costs_nothing(oip_stub):
    """The request that took 7.9 s and 1.2 GB: refused from its shape, before any allocation."""
    request = infer(shape=(3_000_000, 32, 32, 3), raw=None)
    assert request.ByteSize() < 40
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the server is in-process
    started = time.perf_counter()
    for _ in range(20):
        with expect_error(INVALID, "3,000,000 images"):
            oip_stub.ModelInfer(request, timeout=20)
    assert (time.perf_counter() - started) / 20 < 0.05
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50 * 1024


def test_a_16_million_entry_shape_is_refused_without_building_it(channel):
    """gzip made this 16 KB on the wire: listing and showing the shape took 3.7 s and 580 MB
    (a server with the default 17 MiB message limit)."""
    request = infer(shape=[1] * 16_000_000, raw=None).SerializeToString()  # not timed
    infer_raw = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    started = time.perf_counter()
    with expect_error(INVALID, "got 16,000,000 dimensions"):
        infer_raw(request, timeout=30, compression=grpc.Compression.Gzip)
    assert time.perf_counter() - started < 2.0  # parsing 16 MB takes some; it was 4 s and more


@pytest.mark.parametrize("method", ["ModelReady", "ModelMetadata"])
@pytest.mark.parametrize("version", ["²", "٣", "0", "x" * 10_000])
def test_metadata_calls_refuse_a_malformed_version(oip_stub, method, version):
    with expect_error(INVALID, "model_version must be a positive integer"):
        getattr(oip_stub, method)(
            getattr(oip, f"{method}Request")(name=MODEL, version=version), timeout=10)


def test_model_ready_says_no_for_an_unknown_model_or_version(oip_stub):
    ask = lambda **f: oip_stub.ModelReady(oip.ModelReadyRequest(**f), timeout=10).ready  # noqa: E731
    assert ask(name=MODEL) and ask(name=MODEL, version="1")
    assert not ask(name=MODEL, version="9") and not ask(name="nope") and not ask(name=LONG)


def test_typed_contents_serve_like_raw_bytes(oip_stub):
    pixels = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    by_raw = oip_stub.ModelInfer(infer(shape=pixels.shape, raw=pixels.tobytes()), timeout=20)
    by_contents = oip_stub.ModelInfer(infer(shape=pixels.shape, raw=None, contents={
        "uint_contents": pixels.ravel().tolist()}), timeout=20)
    assert by_raw.raw_output_contents[0] == by_contents.raw_output_contents[0]
