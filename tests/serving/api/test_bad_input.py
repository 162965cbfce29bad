"""Bad requests to Classify, through a real server: each gets the right status and a short
message naming the problem, and the server keeps serving (the next good request works).

CASES is the field audit of ClassifyRequest (docs/limits.md): every field has a case for each
class it can fail in — range, datatype fit, strict parsing, length. A new field gets its rows."""

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from tests.serving.conftest import (
    MAX_ERROR_CHARS,
    MODEL,
    SHARED_LIMITS,
    classify_request,
    expect_error,
    image_bytes,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def encoded(array, fmt="PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A 10000 x 10000 (100 MP) black PNG: under 100 KB encoded."""
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def tensor(shape, dtype="uint8", data=None, fill=0):
    if data is None:
        data = np.full(shape, fill, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return pb.Tensor(shape=shape, dtype=dtype, data=data)


def explain(**fields):
    return pb.ExplainRequest(**fields)


JPEG = encoded(np.full((40, 40, 3), 128, np.uint8), "JPEG")
LONG = "x" * 200_000  # a client string far past every length limit and gRPC's metadata limit
OVER_IMAGE_LIMIT = b"\xff\xd8\xff" + b"\0" * SHARED_LIMITS["max_image_bytes"]  # under the message
PNG = image_bytes()
GRAY = np.zeros((40, 40), np.uint8)

CASES = {
    # encoded bytes
    "empty bytes": (dict(image=b""), INVALID, "empty"),
    "image over max_image_bytes": (dict(image=OVER_IMAGE_LIMIT), INVALID,
                                   "bytes; the limit is 524,288"),
    "one byte": (dict(image=b"\xff"), INVALID, "image"),
    "garbage": (dict(image=bytes(range(256)) * 4), INVALID, "image"),
    "text": (dict(image=b"hello, this is not an image at all"), INVALID, "image"),
    "truncated jpeg": (dict(image=JPEG[: len(JPEG) // 2]), INVALID, "truncated"),
    "truncated png": (dict(image=PNG[: len(PNG) // 2]), INVALID, "truncated"),
    "png signature only": (dict(image=PNG[:8]), INVALID, "image"),
    "mislabelled text as jpeg": (dict(image=b"\xff\xd8\xff\xe0" + b"JFIF" * 10), INVALID,
                                 "image"),
    "tiff": (dict(image=encoded(GRAY, "TIFF")), INVALID, "TIFF"),
    "ico": (dict(image=encoded(np.zeros((32, 32, 3), np.uint8), "ICO")), INVALID, "ICO"),
    "ppm": (dict(image=encoded(GRAY, "PPM")), INVALID, "PPM images are not accepted"),
    "pdf": (dict(image=b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"), INVALID, "PDF images are not"),
    "decompression bomb": (dict(image=png_bomb()), INVALID, "pixels"),
    "1x1 image": (dict(image=encoded(np.zeros((1, 1, 3), np.uint8))), INVALID,
                  "1x1 pixels; each side must be at least 8"),
    "7x3 image": (dict(image=encoded(np.zeros((3, 7, 3), np.uint8))), INVALID, "7x3 pixels"),
    "no input at all": (dict(), INVALID, "neither image bytes nor a tensor"),
    # raw tensors
    "tensor wrong size": (dict(tensor=tensor([16, 16, 3])), INVALID, "32"),
    "tensor rank 2": (dict(tensor=tensor([32, 96])), INVALID, "shape"),
    "tensor 4 channels": (dict(tensor=tensor([32, 32, 4])), INVALID, "shape"),
    "tensor batch of 2": (dict(tensor=tensor([2, 32, 32, 3])), INVALID, "shape"),
    "tensor short bytes": (dict(tensor=tensor([32, 32, 3], data=b"\0" * 100)), INVALID, "bytes"),
    "tensor long bytes": (dict(tensor=tensor([32, 32, 3], data=b"\0" * 4000)), INVALID,
                          "bytes"),
    "tensor dtype int64": (dict(tensor=tensor([32, 32, 3], "int64")), INVALID, "int64"),
    "tensor dtype bogus": (dict(tensor=pb.Tensor(shape=[32, 32, 3], dtype="bogus",
                                                  data=b"\0" * 3072)), INVALID, "bogus"),
    "tensor dtype long": (dict(tensor=pb.Tensor(shape=[32, 32, 3], dtype=LONG,
                                                 data=b"\0" * 3072)), INVALID, "200,000 long"),
    "tensor dtype upper case": (dict(tensor=pb.Tensor(shape=[32, 32, 3], dtype="UINT8",
                                                       data=b"\0" * 3072)), INVALID, "'UINT8'"),
    "tensor shape of 100,000 dims": (dict(tensor=pb.Tensor(shape=[1] * 100_000, dtype="uint8",
                                                            data=b"\0" * 3072)), INVALID,
                                     "got 100,000 dimensions"),
    "tensor shape of 5 dims": (dict(tensor=pb.Tensor(shape=[1, 1, 32, 32, 3], dtype="uint8",
                                                      data=b"\0" * 3072)), INVALID,
                               "got 5 dimensions"),
    "tensor negative dims": (dict(tensor=pb.Tensor(shape=[-32, -32, 3], dtype="uint8",
                                                    data=b"\0" * 3072)), INVALID, "shape"),
    "tensor huge dims": (dict(tensor=pb.Tensor(shape=[2**62, 2**62, 3], dtype="uint8",
                                                data=b"")), INVALID, "shape"),
    "tensor NaN": (dict(tensor=tensor([32, 32, 3], "float32", fill=np.nan)), INVALID, "NaN"),
    "tensor Inf": (dict(tensor=tensor([32, 32, 3], "float32", fill=np.inf)), INVALID, "inf"),
    "tensor negative": (dict(tensor=tensor([32, 32, 3], "float32", fill=-1.0)), INVALID,
                        "255"),
    "tensor above 255": (dict(tensor=tensor([32, 32, 3], "float32", fill=256.0)), INVALID,
                         "255"),
    # request options
    "top_k zero": (dict(top_k=0), INVALID, "top_k must be between 1 and the model's 6"),
    "top_k negative": (dict(top_k=-3), INVALID, "got -3"),
    "top_k too large": (dict(top_k=7), INVALID, "got 7"),
    "unknown CAM method": (dict(explain=explain(method="smoothgrad")), INVALID,
                           "unknown CAM method 'smoothgrad'"),
    "CAM method long": (dict(explain=explain(method=LONG)), INVALID, "200,000 long"),
    "CAM method case": (dict(explain=explain(method="GradCAM")), INVALID, "'GradCAM'"),
    "target class too large": (dict(explain=explain(target_class=6)), INVALID,
                               "target_class must be between 0 and 5; got 6"),
    "target class negative": (dict(explain=explain(target_class=-1)), INVALID, "got -1"),
    "unknown model": (dict(model=pb.ModelSpec(name="nope")), NOT_FOUND,
                      f"no model 'nope'; models served: {MODEL}"),
    "unknown version": (dict(model=pb.ModelSpec(name=MODEL, version=9)), NOT_FOUND,
                        "has no version 9; versions: 1"),
    "unknown label": (dict(model=pb.ModelSpec(name=MODEL, label="stable")), NOT_FOUND,
                      "no label 'stable'"),
    "negative version": (dict(model=pb.ModelSpec(name=MODEL, version=-2)), INVALID,
                         "version must be positive"),
    "version and label": (dict(model=pb.ModelSpec(name=MODEL, version=1, label="stable")),
                          INVALID, "a model version or a label, not both"),
    "model name long": (dict(model=pb.ModelSpec(name=LONG)), INVALID,
                        "the model name is 200,000 characters; at most 128"),
    "label long": (dict(model=pb.ModelSpec(name=MODEL, label=LONG)), INVALID,
                   "the label is 200,000 characters; at most 128"),
    "request_id long": (dict(request_id=LONG), INVALID, "request id is 200,000 characters"),
}


def with_input(case: str, fields: dict) -> dict:
    """A case's fields, with a good image where the case is not about the input."""
    if "image" in fields or "tensor" in fields or case == "no input at all":
        return fields
    return {"image": image_bytes(), **fields}


@pytest.fixture(scope="module")
def shared_stub(shared_channel):
    return pb_grpc.ImageClassifierStub(shared_channel)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_request_gets_a_clear_error_and_the_server_keeps_serving(shared_stub, case):
    fields, code, phrase = CASES[case]
    with expect_error(code, phrase):
        shared_stub.Classify(pb.ClassifyRequest(**with_input(case, fields)), timeout=20)
    assert shared_stub.Classify(classify_request(), timeout=20).classes


def test_an_oversized_message_is_refused_by_grpc(shared_stub):
    huge = b"\0" * (SHARED_LIMITS["max_message_bytes"] + 1)
    with pytest.raises(grpc.RpcError) as caught:
        shared_stub.Classify(pb.ClassifyRequest(image=huge), timeout=20)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in caught.value.details()
    assert shared_stub.Classify(classify_request(), timeout=20).classes


def test_an_image_over_its_limit_ends_only_its_own_response_in_a_stream(shared_stub):
    """max_image_bytes sits under max_message_bytes, so the server's own too_large answer is
    reachable: the requests after it are still answered."""
    requests = [classify_request(request_id="before"),
                classify_request(request_id="big", image=OVER_IMAGE_LIMIT),
                classify_request(request_id="after")]
    responses = {r.request_id: r for r in shared_stub.ClassifyStream(iter(requests), timeout=30)}
    assert set(responses) == {"before", "big", "after"}
    assert responses["big"].error.code == INVALID.value[0]
    assert "the limit is 524,288" in responses["big"].error.message
    assert responses["before"].classes and responses["after"].classes


def test_an_animated_gif_is_classified_by_its_first_frame(shared_stub):
    red, blue = (np.zeros((32, 32, 3), np.uint8) for _ in range(2))
    red[..., 0], blue[..., 2] = 255, 255
    frames = [Image.fromarray(red), Image.fromarray(blue)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    animated = shared_stub.Classify(pb.ClassifyRequest(image=buffer.getvalue(), top_k=6),
                                    timeout=20)
    still = shared_stub.Classify(pb.ClassifyRequest(image=encoded(red, "GIF"), top_k=6),
                                 timeout=20)
    assert [c.index for c in animated.classes] == [c.index for c in still.classes]


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_odd_image_modes_are_served(shared_stub, mode):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8))
    image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    if mode == "CMYK":  # CMYK travels as JPEG
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
    response = shared_stub.Classify(pb.ClassifyRequest(image=buffer.getvalue()), timeout=20)
    assert len(response.classes) == 5


def test_stream_of_bad_requests_answers_each_with_its_error(shared_stub):
    ids = {name: fields.get("request_id", name) for name, (fields, _, _) in CASES.items()}
    requests = [pb.ClassifyRequest(**{"request_id": ids[name], **with_input(name, fields)})
                for name, (fields, _, _) in CASES.items()]
    responses = {r.request_id: r for r in shared_stub.ClassifyStream(iter(requests), timeout=60)}
    # an over-long request_id is refused, so its response echoes only the first 128 characters
    assert set(responses) == {i[:128] for i in ids.values()}
    for name, (_, code, phrase) in CASES.items():
        error = responses[ids[name][:128]].error
        assert error.code == code.value[0], (name, error)
        assert phrase.lower() in error.message.lower(), (name, error.message)
        assert len(error.message) <= MAX_ERROR_CHARS, (name, error.message[:MAX_ERROR_CHARS])


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05ab"])
def test_bytes_that_are_not_a_message_get_invalid_argument(shared_channel, shared_stub, data,
                                                          caplog):
    """gRPC's own answer was INTERNAL, and a traceback in the log for each such request."""
    classify = shared_channel.unary_unary("/sightline.classifier.v1.ImageClassifier/Classify")
    with expect_error(INVALID, "not a valid message"):
        classify(data, timeout=10)
    assert "Exception deserializing" not in caplog.text
    assert shared_stub.Classify(classify_request(), timeout=20).classes


def test_a_stream_answers_bytes_that_are_not_a_message_and_goes_on(shared_channel):
    """The proto promises that a bad request ends only its own response: a message that does
    not parse used to end the whole stream with INTERNAL."""
    stream = shared_channel.stream_stream(
        "/sightline.classifier.v1.ImageClassifier/ClassifyStream",
        response_deserializer=pb.ClassifyResponse.FromString)
    good = classify_request(request_id="good").SerializeToString()
    responses = list(stream(iter([good, b"\xff\xff\xff", good.replace(b"good", b"last")]),
                            timeout=20))
    assert sorted(r.request_id for r in responses) == ["", "good", "last"]
    bad = next(r for r in responses if not r.request_id)
    assert bad.error.code == INVALID.value[0] and "not a valid ClassifyRequest" in \
        bad.error.message
