"""Feedback: request ids that prove what was served, so a late label can be counted anywhere.

What it is: ``sign(keys, served)`` turns a ``Served`` record (experiment, variant, predicted
class, unix second) into the request id a response carries; ``verify(keys, request_id, now,
max_age_seconds)`` turns it back, or raises ``FeedbackRejected``. ``RecentLabels`` drops the
second label for one id. Keys (``FeedbackKey``, rotated as ``FeedbackKeys``) come from a file
that every replica mounts.

Who calls it: the router, to sign each response it routes; the ``SendFeedback`` handler on
any replica, maybe hours later, to verify the id and count ``true_label`` against the
predicted class for the arm that served it; offline analysis, to decode logged ids.

The id, version ``ab1``: ``ab1.<experiment>.<b|c>.<class>.<unix seconds>.<tag>``, e.g.
``ab1.resnet-v2.c.7.1700000000.AAECAwQFBgcXrPq8x3PDwcxO4rjchqs9``. The experiment matches
``[A-Za-z0-9._-]{1,64}`` (it may hold dots: the last four fields hold none, so the split is
unique); ``b`` is the baseline, ``c`` the candidate; class and time are canonical decimals
(no leading zeros) below 10**12 and 10**10. The tag is 32 base64url characters (no padding):
an 8-byte random nonce then the first 16 bytes of HMAC-SHA256, keyed by the current key,
over the length-prefixed fields ``ab1``, experiment, variant letter, class and time as ASCII,
and the nonce (each field's length as 8 bytes big-endian, then its bytes).

What it guarantees:
- Stateless: no replica remembers what another served; any replica holding the key verifies.
- At most 128 characters (``serving.inference.types.MAX_ID_CHARS``, which the server
  refuses beyond), all URL-unreserved ASCII, safe in a URL, a header or a log line.
- ``verify`` raises only ``FeedbackRejected`` (a ``BadRequest``), whatever string it gets;
  its ``reason`` is ``malformed`` (not an id of this format), ``forged`` (no key's MAC
  matches, compared in constant time), ``expired`` (older than ``max_age_seconds``) or
  ``future`` (more than ``skew_seconds`` ahead of ``now``). The MAC is checked before the
  time, so nothing is said about an unauthenticated id's time. Each field has one encoding
  only, so every change to a valid id is malformed or forged.
- Rotation: sign with the new key while the old one stays in ``previous`` for at least the
  longest ``max_age_seconds``; then drop it. A key from ``FeedbackKey.generate()`` (a server
  started without a key file) lives in one process: its ids are forged on every other
  replica and after a restart.
- ``RecentLabels`` counts a label once per request id within its window, in O(1) and bounded
  memory. Past the window, or once ``capacity`` newer ids have pushed it out, a repeated label
  counts again: it stops retries and double clicks, not a determined client.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import re
import secrets
import threading
from dataclasses import dataclass, field

from serving.errors import BadRequest, shown
from serving.routing.assignment import Variant

__all__ = ["FeedbackKey", "FeedbackKeyError", "FeedbackKeys", "FeedbackRejected",
           "RecentLabels", "Served", "sign", "verify"]

VERSION = "ab1"
MAX_ID_CHARS = 128  # serving.inference.types.MAX_ID_CHARS; this room may not import it
MIN_SECRET_BYTES = 32
NONCE_BYTES = 8
MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits
DEFAULT_SKEW_SECONDS = 300.0
_CLASS_LIMIT = 10**12  # 12 digits, 10 of time, 64 of experiment: an id is at most 127 chars
_TIME_LIMIT = 10**10  # unix seconds until the year 2286
_LETTERS = {Variant.BASELINE: "b", Variant.CANDIDATE: "c"}
_VARIANTS = {letter: variant for variant, letter in _LETTERS.items()}
_EXPERIMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ID = re.compile(rf"{VERSION}\.([A-Za-z0-9._-]{{1,64}})\.([bc])\.(0|[1-9][0-9]{{0,11}})"
                 rf"\.(0|[1-9][0-9]{{0,9}})\.([A-Za-z0-9_-]{{32}})")


class FeedbackKeyError(ValueError):
    """The key file is missing, unreadable, too short or readable by everyone."""


class FeedbackRejected(BadRequest):
    """A request id whose label cannot be counted; ``reason`` is a fixed word saying why."""


@dataclass(frozen=True)
class FeedbackKey:
    """An HMAC secret of at least 256 bits, as strong as SHA-256 can use."""

    secret: bytes = field(repr=False)  # never in a log or a traceback

    def __post_init__(self):
        if not isinstance(self.secret, bytes) or len(self.secret) < MIN_SECRET_BYTES:
            got = (f"{len(self.secret)}" if isinstance(self.secret, bytes)
                   else f"a {type(self.secret).__name__}")
            raise FeedbackKeyError(f"a feedback key is at least {MIN_SECRET_BYTES} bytes of "
                                   f"secret; got {got}")

    @classmethod
    def generate(cls) -> FeedbackKey:
        """A random key for tests and for a server without a key file: its ids verify only
        in this process, so labels sent to another replica or after a restart are forged."""
        return cls(secrets.token_bytes(MIN_SECRET_BYTES))

    @classmethod
    def from_file(cls, path) -> FeedbackKey:
        """The secret in ``path``: hex, else base64 (either alphabet, padding optional), else
        the raw bytes, whitespace stripped. The mode is checked before a byte is read."""
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_mode & 0o004:
                    raise FeedbackKeyError(f"feedback key file {path} is world-readable; "
                                           f"chmod o-r it")
                text = file.read().strip()
        except OSError as exc:
            raise FeedbackKeyError(f"cannot read feedback key file {path}: "
                                   f"{exc.strerror or exc}") from None
        secret, encoding = _decoded(text)
        if len(secret) < MIN_SECRET_BYTES:
            raise FeedbackKeyError(f"feedback key file {path} holds {len(secret)} bytes of "
                                   f"secret ({encoding}); at least {MIN_SECRET_BYTES} needed")
        return cls(secret)


def _decoded(text: bytes) -> tuple[bytes, str]:
    try:
        return bytes.fromhex(text.decode("ascii")), "read as hex"
    except ValueError:
        pass
    try:
        padded = text + b"=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True), "read as base64"
    except ValueError:
        return text, "read as raw bytes"


@dataclass(frozen=True)
class FeedbackKeys:
    """Sign with ``current``; accept ids signed by it or any of ``previous`` (rotation)."""

    current: FeedbackKey
    previous: tuple[FeedbackKey, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "previous", tuple(self.previous))


@dataclass(frozen=True)
class Served:
    """What one response served: the facts a late label is judged against."""

    experiment: str
    variant: str  # "baseline" or "candidate" (a ``Variant`` when it comes from ``verify``)
    predicted_class: int
    served_at: int  # unix seconds

    def __post_init__(self):
        if not (isinstance(self.experiment, str) and _EXPERIMENT.fullmatch(self.experiment)):
            raise ValueError(f"an experiment name is 1 to 64 of A-Z a-z 0-9 . _ -; got "
                             f"{shown(str(self.experiment))}")
        if not isinstance(self.variant, str) or self.variant not in _LETTERS:
            raise ValueError(f"variant must be 'baseline' or 'candidate'; got "
                             f"{shown(str(self.variant))}")
        for name, limit in (("predicted_class", _CLASS_LIMIT), ("served_at", _TIME_LIMIT)):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < limit:
                raise ValueError(f"{name} must be an int in [0, {limit:.0e}); got {value!r:.24}")


def _mac(secret: bytes, served: Served, nonce: bytes) -> bytes:
    fields = (VERSION.encode(), served.experiment.encode(), _LETTERS[served.variant].encode(),
              str(served.predicted_class).encode(), str(served.served_at).encode(), nonce)
    message = b"".join(len(f).to_bytes(8, "big") + f for f in fields)
    return hmac.digest(secret, message, hashlib.sha256)[:MAC_BYTES]


def sign(keys: FeedbackKeys, served: Served, nonce: bytes | None = None) -> str:
    """The request id for ``served``. The random nonce keeps two identical predictions in one
    second apart, so each gets its own label; pass one only to make an id reproducible."""
    if nonce is None:
        nonce = secrets.token_bytes(NONCE_BYTES)
    elif not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce is {NONCE_BYTES} bytes; got {nonce!r:.40}")
    tag = base64.urlsafe_b64encode(nonce + _mac(keys.current.secret, served, nonce)).decode()
    return (f"{VERSION}.{served.experiment}.{_LETTERS[served.variant]}."
            f"{served.predicted_class}.{served.served_at}.{tag}")


def verify(keys: FeedbackKeys, request_id: str, now: float, max_age_seconds: float,
           skew_seconds: float = DEFAULT_SKEW_SECONDS) -> Served:
    """What the id says was served, once its MAC matches a key and its time lies in
    ``[now - max_age_seconds, now + skew_seconds]``; ``FeedbackRejected`` otherwise."""
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS:
        size = f"{len(request_id):,} characters" if isinstance(request_id, str) else "not text"
        raise FeedbackRejected("malformed", f"the request id is {size}; a feedback id is a "
                                            f"string of at most {MAX_ID_CHARS}")
    match = _ID.fullmatch(request_id)
    if match is None:
        raise FeedbackRejected("malformed", f"the request id is not a feedback id: not "
                                            f"{VERSION}.<experiment>.<b|c>.<class>.<time>.<tag>")
    experiment, letter, predicted_class, served_at, tag = match.groups()
    served = Served(experiment, _VARIANTS[letter], int(predicted_class), int(served_at))
    raw = base64.urlsafe_b64decode(tag)
    nonce, mac = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    if not any(hmac.compare_digest(mac, _mac(key.secret, served, nonce))
               for key in (keys.current, *keys.previous)):
        raise FeedbackRejected("forged", "the request id's signature matches no feedback key: "
                                         "altered, or signed by another or a retired key")
    age = now - served.served_at
    if -age > skew_seconds:
        raise FeedbackRejected("future", f"the request id is {-age:.0f} s ahead of this server's "
                                         f"clock; the skew allowed is {skew_seconds:.0f} s")
    if age > max_age_seconds:
        raise FeedbackRejected("expired", f"the request id was served {age:.0f} s ago; feedback "
                                          f"is taken for {max_age_seconds:.0f} s")
    return served


class RecentLabels:
    """Which request ids already had a label within ``window_seconds``, for at most
    ``capacity`` ids (the oldest go first). Call it after ``verify``, so only genuine, short
    ids take room."""

    def __init__(self, capacity: int, window_seconds: float):
        if capacity < 1 or not window_seconds > 0:
            raise ValueError(f"need capacity >= 1 and window_seconds > 0; got {capacity!r}, "
                             f"{window_seconds!r}")
        self.capacity = capacity
        self.window_seconds = window_seconds
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, request_id: str, now: float) -> bool:
        """True the first time ``request_id`` is seen within the window; amortized O(1): each
        entry is expired or evicted once."""
        with self._lock:
            seen, window = self._seen, self.window_seconds
            while seen and now - next(iter(seen.values())) >= window:
                seen.popitem(last=False)
            first = seen.get(request_id)
            if first is not None and now - first < window:
                return False  # left in place: a duplicate does not extend the window
            seen.pop(request_id, None)  # expired but behind a newer entry: seen afresh
            seen[request_id] = now
            if len(seen) > self.capacity:
                seen.popitem(last=False)
            return True
