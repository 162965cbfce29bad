"""decode_image and tensor_to_input: every bad input ends as one InputError with a known reason."""

import base64
import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from serving.image.decode import (
    REASONS,
    DecodeLimits,
    InputError,
    decode_image,
    tensor_to_input,
)
from serving.image.preprocess import to_model_input

RED = (200, 30, 40)
WHITE = (255, 255, 255)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def photo(fmt: str, size=(40, 30)) -> bytes:
    """A noisy RGB picture, so that compressed formats have real data to cut or break."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit all-black PNG of width x height, built a row at a time: a few KB on disk."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    compressor, row = zlib.compressobj(9), bytes(1 + (width + 7) // 8)  # filter byte + bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grey
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def flip_byte(data: bytes, at: int) -> bytes:
    broken = bytearray(data)
    broken[at] ^= 0xFF
    return bytes(broken)


def png_with_broken_idat() -> bytes:
    data = photo("PNG")
    return flip_byte(data, data.index(b"IDAT") + 20)


def jpeg_header_only() -> bytes:
    data = photo("JPEG")
    return data[: data.index(b"\xff\xda")]  # everything before the start of scan


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(photo("BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


ONLY_PNG = DecodeLimits(formats=frozenset({"PNG"}))

BAD_IMAGES = [
    ("empty", lambda: b"", None, "empty", "0 bytes"),
    ("one byte", lambda: b"\xff", None, "unknown_format", "not an image"),
    ("garbage", lambda: np.random.default_rng(1).bytes(4096), None, "unknown_format", "not an"),
    ("text", lambda: b"hello, this is a cat", None, "unknown_format", "send BMP, GIF, JPEG"),
    ("base64 PNG", lambda: base64.b64encode(photo("PNG")), None, "unknown_format",
     "not an image"),
    ("TGA, no magic number", lambda: photo("TGA"), None, "unknown_format", "not an image"),
    ("truncated JPEG", lambda: half(photo("JPEG")), None, "truncated", "ends early"),
    ("truncated PNG", lambda: half(photo("PNG")), None, "truncated", "ends early"),
    ("truncated GIF", lambda: half(photo("GIF")), None, "truncated", "ends early"),
    ("truncated BMP", lambda: half(photo("BMP")), None, "truncated", "ends early"),
    ("truncated WebP", lambda: half(photo("WEBP")), None, "truncated", "ends early"),
    ("JPEG header only", jpeg_header_only, None, "corrupt", "could not be decoded"),
    ("PNG with broken IDAT", png_with_broken_idat, None, "corrupt", "broken data stream"),
    ("PNG with broken IHDR CRC", lambda: flip_byte(photo("PNG"), 29), None, "corrupt",
     "starts like a PNG"),
    ("PNG signature only", lambda: photo("PNG")[:8], None, "corrupt", "starts like a PNG"),
    ("GIF header only", lambda: photo("GIF")[:13], None, "corrupt", "starts like a GIF"),
    ("TIFF", lambda: photo("TIFF"), None, "unsupported_format", "TIFF images are not accepted"),
    ("ICO", lambda: photo("ICO"), None, "unsupported_format", "ICO images"),
    ("PDF", lambda: photo("PDF"), None, "unsupported_format", "PDF images"),
    ("EPS", lambda: photo("EPS"), None, "unsupported_format", "EPS images"),
    ("PPM", lambda: photo("PPM"), None, "unsupported_format", "PPM images"),
    ("QOI", lambda: photo("QOI"), None, "unsupported_format", "QOI images"),
    ("JPEG 2000", lambda: photo("JPEG2000"), None, "unsupported_format", "JPEG2000 images"),
    ("AVIF", lambda: photo("AVIF"), None, "unsupported_format", "AVIF images"),
    ("HEIF header", lambda: b"\0\0\0\x18ftypheic" + bytes(64), None, "unsupported_format",
     "HEIF images"),
    ("SVG", lambda: b'<svg xmlns="http://www.w3.org/2000/svg"/>', None, "unsupported_format",
     "SVG images"),
    ("JPEG when only PNG is allowed", lambda: photo("JPEG"), ONLY_PNG, "unsupported_format",
     "JPEG images are not accepted; send PNG"),
    ("over max_bytes", lambda: photo("BMP"), DecodeLimits(max_bytes=1000), "too_large",
     "the limit is 1,000"),
    ("48 MP bomb, our limit", lambda: png_bomb(8000, 6000), None, "too_many_pixels",
     "8000x6000 = 48,000,000 pixels"),
    ("400 MP bomb, Pillow's limit", lambda: png_bomb(20000, 20000), None, "too_many_pixels",
     "could be decompression bomb"),
    ("BMP header claiming 900 MP", lambda: bmp_claiming(30000, 30000), None, "too_many_pixels",
     "900000000 pixels"),
    ("1x1", lambda: encode(Image.new("RGB", (1, 1)), "PNG"), None, "too_small", "1x1 pixels"),
    ("7x3", lambda: encode(Image.new("RGB", (7, 3)), "GIF"), None, "too_small", "at least 8"),
    ("a 100x7 strip", lambda: photo("JPEG", (100, 7)), None, "too_small", "100x7"),
]


@pytest.mark.parametrize(
    ("make", "limits", "reason", "phrase"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_IMAGES],
)
def test_bad_image_raises_its_reason(make, limits, reason, phrase):
    with pytest.raises(InputError) as caught:
        decode_image(make(), 16, 16, limits or DecodeLimits())
    assert caught.value.reason == reason
    assert phrase in str(caught.value)


def test_bombs_are_small_files_refused_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decoded.append(image))
    for bomb in (png_bomb(8000, 6000), png_bomb(20000, 20000)):
        assert len(bomb) < 100_000
        with pytest.raises(InputError, match="pixels"):
            decode_image(bomb, 16, 16)
    assert decoded == []


def test_a_bomb_pillow_only_warns_about_is_refused_by_our_limit():
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(InputError) as caught:
        decode_image(png_bomb(10000, 10000), 16, 16)
    assert caught.value.reason == "too_many_pixels" and "100,000,000 pixels" in str(caught.value)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_the_bomb_warning_raised_as_an_error_is_too_many_pixels():
    with pytest.raises(InputError) as caught:
        decode_image(png_bomb(10000, 10000), 16, 16)
    assert caught.value.reason == "too_many_pixels" and "decompression bomb" in str(caught.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_each_allowed_format_round_trips(fmt):
    out = decode_image(encode(Image.new("RGB", (40, 30), RED), fmt), 16, 24)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.mean(axis=(0, 1)), RED, atol=8)


def test_png_bytes_sent_as_a_jpeg_are_sniffed_and_decode():
    claimed_jpeg = encode(Image.new("RGB", (20, 20), RED), "PNG")  # a client's wrong file name
    np.testing.assert_array_equal(decode_image(claimed_jpeg, 8, 8)[0, 0], RED)


def test_the_smallest_allowed_image_decodes():
    assert decode_image(encode(Image.new("L", (8, 8), 90), "PNG"), 8, 8).max() == 90


def paletted(transparent: bool) -> Image.Image:
    image = Image.new("P", (10, 10), 1)
    image.putpalette([0, 0, 0, *RED])
    if transparent:
        image.info["transparency"] = 1
    return image


def grey(mode: str, value) -> Image.Image:
    return Image.new(mode, (10, 10), value)


MODES = [
    ("1", lambda: grey("1", 1), WHITE),
    ("L", lambda: grey("L", 77), (77, 77, 77)),
    ("LA opaque", lambda: grey("LA", (77, 255)), (77, 77, 77)),
    ("LA transparent", lambda: grey("LA", (77, 0)), WHITE),
    ("P", lambda: paletted(False), RED),
    ("P with a transparent index", lambda: paletted(True), WHITE),
    ("PA transparent", lambda: grey("PA", (0, 0)), WHITE),
    ("RGB", lambda: grey("RGB", RED), RED),
    ("RGBA fully transparent", lambda: grey("RGBA", (*RED, 0)), WHITE),
    ("RGBA half transparent", lambda: grey("RGBA", (255, 0, 0, 128)), (255, 127, 127)),
    ("RGBa", lambda: grey("RGBa", (0, 0, 0, 0)), WHITE),
    ("CMYK", lambda: grey("CMYK", (0, 255, 255, 0)), (255, 0, 0)),
    ("YCbCr", lambda: grey("YCbCr", (76, 85, 255)), (254, 0, 0)),
    ("I 65535", lambda: grey("I", 65535), WHITE),
    ("I 32768", lambda: grey("I", 32768), (128, 128, 128)),
    ("I;16 65535", lambda: grey("I;16", 65535), WHITE),
    ("I;16 4095 is dark, not clipped white", lambda: grey("I;16", 4095), (15, 15, 15)),
    ("I;16B", lambda: grey("I;16B", 32768), (128, 128, 128)),
    ("F", lambda: grey("F", 12.6), (12, 12, 12)),
    ("F above 255", lambda: grey("F", 300.0), WHITE),
]


@pytest.mark.parametrize(("make", "rgb"), [pytest.param(*m[1:], id=m[0]) for m in MODES])
def test_every_mode_becomes_rgb(make, rgb):
    out = to_model_input(make(), 4, 6)
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], rgb)


@pytest.mark.parametrize(
    ("image", "fmt", "rgb"),
    [
        pytest.param(grey("RGBA", (*RED, 0)), "PNG", WHITE, id="transparent PNG"),
        pytest.param(paletted(True), "GIF", WHITE, id="GIF with a transparent index"),
        pytest.param(grey("I;16", 65535), "PNG", WHITE, id="16-bit grey PNG"),
        pytest.param(grey("CMYK", (0, 255, 255, 0)), "JPEG", (255, 0, 0), id="CMYK JPEG"),
    ],
)
def test_decoded_modes_become_rgb(image, fmt, rgb):
    np.testing.assert_allclose(decode_image(encode(image, fmt), 8, 8)[0, 0], rgb, atol=2)


def test_a_16_bit_grey_png_opens_as_i16_so_the_scaling_is_exercised():
    with Image.open(io.BytesIO(encode(grey("I;16", 65535), "PNG"))) as image:
        assert image.mode == "I;16"  # what Pillow 13 opens; the scaling above is ours


def white_left_black_right_jpeg(orientation: int) -> bytes:
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 tall
    pixels[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), "JPEG", exif=exif)


def test_exif_orientation_6_turns_the_photo_upright():
    out = decode_image(white_left_black_right_jpeg(6), 40, 20)  # turned: 20 wide, 40 tall
    assert out[:15].min() > 200 and out[25:].max() < 50  # the white left half is now on top


def test_a_photo_turned_already_is_not_turned_again():
    with Image.open(io.BytesIO(white_left_black_right_jpeg(6))) as image:
        turned_by_caller = ImageOps.exif_transpose(image)  # what training's folder loader does
        np.testing.assert_array_equal(
            to_model_input(turned_by_caller, 40, 20), to_model_input(image, 40, 20)
        )


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(io.BytesIO(data)) as image:
        assert image.n_frames == 3
    np.testing.assert_allclose(decode_image(data, 8, 8)[4, 4], RED, atol=4)


def pixels(dtype: str, shape=(4, 5, 3), fill=7.0) -> bytes:
    return np.full(shape, fill, dtype=dtype).tobytes()


def with_one(value: float) -> bytes:
    array = np.full((4, 5, 3), 100.0, dtype=np.float32)
    array[1, 2, 0] = value
    return array.tobytes()


BAD_TENSORS = [
    ("rank 2", pixels("uint8"), [4, 15], "uint8", "bad_tensor_shape", "expected shape [4, 5, 3]"),
    ("rank 5", pixels("uint8"), [1, 1, 4, 5, 3], "uint8", "bad_tensor_shape", "got [1, 1, 4, 5"),
    ("wrong height", pixels("uint8"), [5, 4, 3], "uint8", "bad_tensor_shape", "got [5, 4, 3]"),
    ("channels first", pixels("uint8"), [3, 4, 5], "uint8", "bad_tensor_shape", "(RGB)"),
    ("4 channels", pixels("uint8", (4, 5, 4)), [4, 5, 4], "uint8", "bad_tensor_shape",
     "got [4, 5, 4]"),
    ("1 channel", pixels("uint8", (4, 5, 1)), [4, 5, 1], "uint8", "bad_tensor_shape",
     "got [4, 5, 1]"),
    ("batch of 2", pixels("uint8", (2, 4, 5, 3)), [2, 4, 5, 3], "uint8", "bad_tensor_shape",
     "[1, 4, 5, 3]"),
    ("bytes short", pixels("uint8")[:-1], [4, 5, 3], "uint8", "bad_tensor_size", "got 59"),
    ("bytes long", pixels("uint8") + b"\0", [4, 5, 3], "uint8", "bad_tensor_size", "needs 60"),
    ("float32 bytes called uint8", pixels("float32"), [4, 5, 3], "uint8", "bad_tensor_size",
     "got 240"),
    ("int64", pixels("int64"), [4, 5, 3], "int64", "bad_tensor_dtype", "'int64' is not accepted"),
    ("float16", pixels("float16"), [4, 5, 3], "float16", "bad_tensor_dtype", "uint8 or float32"),
    ("bogus", b"", [4, 5, 3], "bogus", "bad_tensor_dtype", "'bogus'"),
    ("OIP's FP32 spelling", pixels("float32"), [4, 5, 3], "FP32", "bad_tensor_dtype", "'FP32'"),
    ("NaN", with_one(np.nan), [4, 5, 3], "float32", "non_finite", "1 NaN or infinite"),
    ("+Inf", with_one(np.inf), [4, 5, 3], "float32", "non_finite", "must be finite"),
    ("-Inf", with_one(-np.inf), [1, 4, 5, 3], "float32", "non_finite", "infinite"),
    ("-1.0", with_one(-1.0), [4, 5, 3], "float32", "out_of_range", "span [-1, 100]"),
    ("256.0", with_one(256.0), [4, 5, 3], "float32", "out_of_range", "span [100, 256]"),
    ("standardised values", pixels("float32", fill=-0.5), [4, 5, 3], "float32", "out_of_range",
     "the model standardises them itself"),
]


@pytest.mark.parametrize(
    ("data", "shape", "dtype", "reason", "phrase"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_TENSORS],
)
def test_bad_tensor_raises_its_reason(data, shape, dtype, reason, phrase):
    with pytest.raises(InputError) as caught:
        tensor_to_input(data, shape, dtype, 4, 5)
    assert caught.value.reason == reason
    assert phrase in str(caught.value)


def test_a_uint8_tensor_is_a_view_not_a_copy():
    data = np.arange(60, dtype=np.uint8).tobytes()
    out = tensor_to_input(data, [4, 5, 3], "uint8", 4, 5)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and out[3, 4, 2] == 59
    assert np.shares_memory(out, np.frombuffer(data, dtype=np.uint8))


def test_a_float32_tensor_with_a_batch_dim_keeps_its_dtype_and_edges():
    array = np.linspace(0.0, 255.0, 60, dtype=np.float32).reshape(1, 4, 5, 3)
    out = tensor_to_input(array.tobytes(), [1, 4, 5, 3], "float32", 4, 5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, array[0])


def test_every_reason_is_exercised_and_documented():
    raised = {case[3] for case in BAD_IMAGES} | {case[4] for case in BAD_TENSORS}
    assert raised == REASONS


def test_a_reason_outside_the_fixed_set_is_a_bug():
    with pytest.raises(ValueError, match="not in REASONS"):
        InputError("oops", "a typo would add a metric label")


@pytest.mark.parametrize(
    ("settings", "phrase"),
    [
        ({"formats": frozenset({"JPEG", "HEIC"})}, "got ['HEIC', 'JPEG']"),
        ({"formats": frozenset()}, "format names"),
        ({"min_side": 0}, "positive"),
        ({"max_pixels": Image.MAX_IMAGE_PIXELS + 1}, "MAX_IMAGE_PIXELS"),
    ],
)
def test_decode_limits_refuse_nonsense(settings, phrase):
    with pytest.raises(ValueError, match=re.escape(phrase)):
        DecodeLimits(**settings)
