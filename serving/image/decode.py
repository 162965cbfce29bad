"""The first stage of the serving path: untrusted client bytes -> the model's input array.

The gRPC handlers call it once per request, on worker threads (Pillow releases the GIL while it
decodes). It returns a (height, width, 3) array or raises ``InputError``, whatever the bytes: a
bad image must never become an internal error. ``InputError.reason`` comes from ``REASONS``, a
fixed set, so it is safe as a metric label; ``str(error)`` tells the client what was wrong.

Encoded images (``decode_image``): Pillow identifies the format from the bytes, with only the
allow-listed parsers taking part, so no other plugin ever reads client bytes. Width and height
come from the header and are checked before a pixel is decoded. ``preprocess.to_model_input``,
shared with training, does the rest. A small magic-number table (``_MAGIC``) only names the
format in the message when Pillow refuses the bytes.

Decompression bombs: Pillow's own guard (``Image.MAX_IMAGE_PIXELS``, about 89 M) warns inside
``Image.open`` above its limit and raises above twice that. ``DecodeLimits`` refuses a
``max_pixels`` above Pillow's limit, so every image Pillow would warn about is refused here too,
right after the header is read. The warning is not turned into an error per call with
``warnings.catch_warnings``: that swaps process-wide state and is not thread-safe (concurrent
handlers can leave the filter set or unset for everyone). Left alone, Pillow prints each bomb
size once and keeps it in its warning registry; a server that minds should run
``warnings.simplefilter("error", Image.DecompressionBombWarning)`` once at start-up, and the
raised warning is reported as ``too_many_pixels`` like the rest.

Raw tensors (``tensor_to_input``): a zero-copy, read-only view of the request bytes, checked for
dtype, shape, byte count and, for floats, pixel values.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import shown
from serving.image.preprocess import to_model_input

__all__ = [
    "REASONS",
    "TENSOR_DTYPES",
    "DecodeLimits",
    "decode",
    "InputError",
    "decode_image",
    "tensor_to_input",
]

REASONS = frozenset({
    "empty",  # no bytes at all
    "too_large",  # more encoded bytes than DecodeLimits.max_bytes
    "unknown_format",  # not an image format anyone here recognises (garbage, text)
    "unsupported_format",  # a recognised image format outside the allow-list (TIFF, HEIF, ...)
    "too_many_pixels",  # the header claims more pixels than max_pixels: a decompression bomb
    "too_small",  # a side shorter than min_side: nothing to classify
    "truncated",  # the data ends before the image does
    "corrupt",  # anything else the decoder refuses; the message carries Pillow's words
    "bad_tensor_dtype",  # a raw tensor dtype not in TENSOR_DTYPES
    "bad_tensor_shape",  # not [height, width, 3] or [1, height, width, 3]
    "bad_tensor_size",  # byte count differs from prod(shape) * itemsize
    "non_finite",  # NaN or +-Inf in a float tensor
    "out_of_range",  # float pixels outside [0, 255]
})

# Raw tensors arrive little-endian, the byte order of every machine we serve on.
TENSOR_DTYPES: dict[str, np.dtype] = {"uint8": np.dtype("u1"), "float32": np.dtype("<f4")}

# (offset, magic, Pillow-style name): names a format in a refusal; never decides what is decoded.
_MAGIC = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    *((0, b"GIF8" + version, "GIF") for version in (b"7a", b"9a")),
    (0, b"BM", "BMP"),
    (8, b"WEBP", "WEBP"),  # after b"RIFF" and a 4-byte length
    *((0, magic, "TIFF") for magic in (b"II*\x00", b"MM\x00*")),
    *((4, b"ftyp" + brand, "HEIF") for brand in (b"heic", b"heix", b"mif1")),
    (4, b"ftypavif", "AVIF"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"%PDF-", "PDF"),
    (0, b"%!PS", "EPS"),
    (0, b"8BPS", "PSD"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"icns", "ICNS"),
    *((0, magic, "PPM") for magic in (b"P4\n", b"P5\n", b"P6\n")),
    *((0, magic, "SVG") for magic in (b"<svg", b"<?xml")),
)


class InputError(ValueError):
    """Bad client input: ``reason`` is a label from REASONS, ``str(error)`` the client's message."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"InputError reason {reason!r} is not in REASONS; add it there first")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """What ``decode_image`` accepts; the defaults suit photos sent to a classifier."""

    max_bytes: int = 16 * 1024 * 1024  # encoded size: room for a full-resolution phone photo
    max_pixels: int = 4096 * 4096  # width * height from the header: a 12 MP phone photo fits;
    # decoding one this size peaks near 100 MB, which is why the server also bounds how many
    # decode at once (max_concurrent_decodes)
    min_side: int = 8  # below this there is nothing to classify
    formats: frozenset[str] = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"})  # Pillow names

    def __post_init__(self):
        Image.init()  # registers every plugin, so the names below can be checked
        unknown = sorted(self.formats - Image.OPEN.keys())
        if not self.formats or unknown:
            raise ValueError(
                f"formats must be a non-empty set of Pillow format names it can read; "
                f"got {sorted(self.formats)}"
            )
        if min(self.max_bytes, self.max_pixels, self.min_side) < 1:
            raise ValueError(f"limits must be positive; got {self}")
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(
                f"max_pixels {self.max_pixels} exceeds Pillow's Image.MAX_IMAGE_PIXELS "
                f"{Image.MAX_IMAGE_PIXELS}; raise that first, or Pillow refuses such images itself"
            )


def decode_image(
    data: bytes, height: int, width: int, limits: DecodeLimits = DecodeLimits()
) -> np.ndarray:
    """Encoded image bytes -> (height, width, 3) uint8 model input, or InputError.

    The format is read from the bytes, never from a file name or a claimed type, and must be in
    ``limits.formats``. Animated images (GIF, WebP, APNG) give their first frame.
    """
    return decode(data, height, width, limits)[0]


def decode(
    data: bytes, height: int, width: int, limits: DecodeLimits = DecodeLimits()
) -> tuple[np.ndarray, int]:
    """``decode_image``, plus the pixel count (width x height) of the image as sent, for the
    input-size metrics."""
    if not data:
        raise InputError("empty", "the image is empty: 0 bytes were sent")
    if len(data) > limits.max_bytes:
        raise InputError(
            "too_large", f"the image is {len(data):,} bytes; the limit is {limits.max_bytes:,}"
        )
    try:
        with Image.open(io.BytesIO(data), formats=sorted(limits.formats)) as image:
            _check_header_size(image, limits)
            return to_model_input(image, height, width), image.width * image.height
    except InputError:
        raise
    except UnidentifiedImageError:
        raise _unidentified(data, limits.formats) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError("too_many_pixels", f"the image has too many pixels: {error}") from None
    except MemoryError:
        raise  # the server is short of memory: not the client's fault
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise _undecodable(data, error) from error


def _check_header_size(image: Image.Image, limits: DecodeLimits) -> None:
    """Refuse bombs and specks from the header's width and height; nothing is decoded yet."""
    columns, rows = image.size
    if columns * rows > limits.max_pixels:
        raise InputError(
            "too_many_pixels",
            f"the image is {columns}x{rows} = {columns * rows:,} pixels; "
            f"the limit is {limits.max_pixels:,}",
        )
    if min(columns, rows) < limits.min_side:
        raise InputError(
            "too_small",
            f"the image is {columns}x{rows} pixels; each side must be at least {limits.min_side}",
        )


def _unidentified(data: bytes, formats: frozenset[str]) -> InputError:
    """Why no allowed parser took the bytes, named from their magic number when there is one."""
    name = next((name for at, magic, name in _MAGIC if data.startswith(magic, at)), None)
    accepted = ", ".join(sorted(formats))
    if name is None:
        return InputError(
            "unknown_format", f"the data is not an image in a known format; send {accepted}"
        )
    if name in formats:
        return InputError("corrupt", f"the data starts like a {name} image but its header is bad")
    return InputError("unsupported_format", f"{name} images are not accepted; send {accepted}")


def _undecodable(data: bytes, error: Exception) -> InputError:
    """A header that opened but pixels that would not decode: truncated, or otherwise corrupt."""
    said = str(error) or type(error).__name__
    # Pillow says "truncated" for JPEG, PNG, GIF and BMP; a cut WebP only fails to make a
    # decoder, but its RIFF header states the full length.
    riff_cut = data.startswith(b"RIFF") and len(data) < 8 + int.from_bytes(data[4:8], "little")
    if "truncated" in said.lower() or riff_cut:
        return InputError("truncated", f"the image data ends early (cut off?): {said}")
    return InputError("corrupt", f"the image could not be decoded: {said}")


def tensor_to_input(
    data: bytes, shape: Sequence[int], dtype: str, height: int, width: int
) -> np.ndarray:
    """A raw row-major tensor -> (height, width, 3) array of its own dtype, or InputError.

    The result is a read-only view of ``data`` (no copy). Float values are pixels in [0, 255],
    not standardised values: standardisation is the model's first layer.
    """
    if dtype not in TENSOR_DTYPES:
        accepted = " or ".join(TENSOR_DTYPES)
        raise InputError("bad_tensor_dtype", f"dtype {shown(dtype)} is not accepted; send "
                                             f"{accepted}")
    expected = [height, width, 3]
    if list(shape) not in (expected, [1, *expected]):
        raise InputError(
            "bad_tensor_shape",
            f"expected shape {expected} or {[1, *expected]} (RGB), got {shown(list(shape))}",
        )
    itemsize = TENSOR_DTYPES[dtype].itemsize
    if len(data) != height * width * 3 * itemsize:
        raise InputError(
            "bad_tensor_size",
            f"a {dtype} tensor of shape {list(shape)} needs {height * width * 3 * itemsize:,} "
            f"bytes, got {len(data):,}",
        )
    pixels = np.frombuffer(data, dtype=TENSOR_DTYPES[dtype]).reshape(height, width, 3)
    if pixels.dtype.kind == "f":
        _check_pixel_values(pixels)
    return pixels


def _check_pixel_values(pixels: np.ndarray) -> None:
    """Finite and within [0, 255]: two reductions, no temporary arrays on the happy path."""
    low, high = pixels.min(), pixels.max()  # NaN propagates into both
    if not (np.isfinite(low) and np.isfinite(high)):
        count = np.count_nonzero(~np.isfinite(pixels))
        raise InputError(
            "non_finite",
            f"the tensor holds {count:,} NaN or infinite values; pixels must be finite",
        )
    if low < 0 or high > 255:
        raise InputError(
            "out_of_range",
            f"the tensor's values span [{low:g}, {high:g}]; pixels must be in [0, 255] "
            "(raw pixels: the model standardises them itself)",
        )
