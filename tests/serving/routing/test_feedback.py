"""Feedback ids: the specified wire format, round trips, rotation, every rejection reason, a
seeded fuzz of verify, the duplicate filter, and key files."""

import base64
import hashlib
import hmac
import random
import re
import string
import subprocess
import sys
import threading
import urllib.parse

import pytest

from serving.errors import BadRequest
from serving.routing.assignment import Variant
from serving.routing.feedback import (
    MAX_ID_CHARS,
    FeedbackKey,
    FeedbackKeyError,
    FeedbackKeys,
    FeedbackRejected,
    RecentLabels,
    Served,
    sign,
    verify,
)
from tests.conftest import ROOT

KEY = FeedbackKey(bytes(range(32)))
KEYS = FeedbackKeys(KEY)
NOW = 1_700_000_000
SERVED = Served("resnet-v2", "candidate", 7, NOW)
NONCE = bytes(range(8))
DAY = 86_400
EXAMPLE = "ab1.resnet-v2.c.7.1700000000.AAECAwQFBgcXrPq8x3PDwcxO4rjchqs9"  # SERVED, NONCE, KEY


def rejected(request_id, keys=KEYS, now=NOW, max_age=DAY, **kwargs) -> str:
    with pytest.raises(FeedbackRejected) as caught:
        verify(keys, request_id, now, max_age, **kwargs)
    assert isinstance(caught.value, BadRequest)  # the server's error tree answers it
    return caught.value.reason


def test_the_id_is_the_specified_format():
    """What another replica, or another language, must reproduce from the module's spec."""
    fields = [b"ab1", b"resnet-v2", b"c", b"7", str(NOW).encode(), NONCE]
    message = b"".join(len(f).to_bytes(8, "big") + f for f in fields)
    mac = hmac.new(bytes(range(32)), message, hashlib.sha256).digest()[:16]
    tag = base64.urlsafe_b64encode(NONCE + mac).decode()
    assert sign(KEYS, SERVED, NONCE) == f"ab1.resnet-v2.c.7.{NOW}.{tag}"


def test_ids_never_change():
    """Changing the format would turn every label still on its way into a forgery."""
    assert sign(KEYS, SERVED, NONCE) == EXAMPLE


@pytest.mark.parametrize("served", [
    SERVED, Served("a", "baseline", 0, 0), Served("exp.2024-06.b.7", "baseline", 999, NOW - 5),
    Served("_", Variant.CANDIDATE, 10**12 - 1, NOW)])
def test_verify_returns_what_was_signed(served):
    back = verify(KEYS, sign(KEYS, served), NOW, max_age_seconds=10**10)
    assert back == served
    assert back.variant is Variant(served.variant)


def test_each_id_has_its_own_nonce():
    """Two identical predictions in one second get two labels, not one and a duplicate."""
    ids = {sign(KEYS, SERVED) for _ in range(100)}
    assert len(ids) == 100


@pytest.mark.parametrize("nonce", [b"", b"1234567", b"123456789", "12345678"])
def test_a_nonce_is_eight_bytes(nonce):
    with pytest.raises(ValueError, match="8 bytes"):
        sign(KEYS, SERVED, nonce)


def test_the_longest_id_fits_the_server_limit_and_any_url_or_header():
    for served in (Served("x" * 64, "baseline", 10**6, NOW),
                   Served("x" * 64, "candidate", 10**12 - 1, 10**10 - 1)):
        request_id = sign(KEYS, served)
        assert len(request_id) <= MAX_ID_CHARS == 128
        assert urllib.parse.quote(request_id, safe="") == request_id
        assert request_id.isascii() and request_id.isprintable()


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"experiment": ""}, "experiment"), ({"experiment": "x" * 65}, "experiment"),
    ({"experiment": "a b"}, "experiment"), ({"experiment": "café"}, "experiment"),
    ({"experiment": "a\n"}, "experiment"), ({"variant": "control"}, "variant"),
    ({"variant": ["baseline"]}, "variant"), ({"predicted_class": -1}, "predicted_class"),
    ({"predicted_class": 10**12}, "predicted_class"), ({"predicted_class": 7.0}, "predicted_class"),
    ({"predicted_class": True}, "predicted_class"), ({"served_at": 10**10}, "served_at"),
    ({"served_at": NOW + 0.5}, "served_at")])
def test_served_refuses_what_no_id_could_carry(kwargs, problem):
    fields = {"experiment": "e", "variant": "baseline", "predicted_class": 1, "served_at": NOW}
    with pytest.raises(ValueError, match=problem):
        Served(**{**fields, **kwargs})


def test_an_error_repeats_a_long_name_only_clipped():
    with pytest.raises(ValueError) as caught:
        Served("?" * 10_000_000, "baseline", 1, NOW)
    assert len(str(caught.value)) < 150 and "10,000,000 long" in str(caught.value)


def test_rotation_verifies_ids_signed_with_a_previous_key():
    old, new, stranger = FeedbackKey.generate(), FeedbackKey.generate(), FeedbackKey.generate()
    rotated = FeedbackKeys(new, previous=[old])
    assert rotated.previous == (old,)
    assert verify(rotated, sign(FeedbackKeys(old), SERVED), NOW, DAY) == SERVED
    assert verify(rotated, sign(rotated, SERVED), NOW, DAY) == SERVED
    assert rejected(sign(rotated, SERVED), keys=FeedbackKeys(old)) == "forged"  # signs with new
    assert rejected(sign(FeedbackKeys(stranger), SERVED), keys=rotated) == "forged"


def test_a_changed_field_is_forged():
    request_id = sign(KEYS, SERVED)
    for field, changed in ((".c.", ".b."), (".7.", ".8."), (f".{NOW}.", f".{NOW - 1}."),
                           ("resnet-v2", "resnet-v3")):
        assert rejected(request_id.replace(field, changed)) == "forged"


@pytest.mark.parametrize("request_id", [
    "", "ab1", "1c9e2f0a-uuid-style", EXAMPLE.replace("ab1", "ab2"), EXAMPLE.replace(".c.", ".x."),
    EXAMPLE.replace(".7.", ".07."), EXAMPLE + "=", EXAMPLE + "\n", " " + EXAMPLE,
    EXAMPLE + "A" * 100, None, EXAMPLE.encode()])
def test_what_is_not_a_feedback_id_is_malformed(request_id):
    assert rejected(request_id) == "malformed"


def test_an_id_older_than_the_max_age_is_expired():
    request_id = sign(KEYS, SERVED)
    assert verify(KEYS, request_id, NOW + DAY, DAY) == SERVED
    assert rejected(request_id, now=NOW + DAY + 1) == "expired"


def test_an_id_from_beyond_the_skew_is_future():
    request_id = sign(KEYS, SERVED)
    assert verify(KEYS, request_id, NOW - 300, DAY) == SERVED
    assert rejected(request_id, now=NOW - 301) == "future"
    assert verify(KEYS, request_id, NOW - 900, DAY, skew_seconds=900) == SERVED
    assert rejected(request_id, now=NOW - 31, skew_seconds=30) == "future"


def test_the_signature_is_judged_before_the_time():
    """An unauthenticated id learns nothing about its time from the answer."""
    stranger = FeedbackKeys(FeedbackKey.generate())
    assert rejected(sign(stranger, SERVED), now=NOW + 10 * DAY) == "forged"
    assert rejected(sign(stranger, SERVED), now=NOW - 10 * DAY) == "forged"


def test_a_fresh_interpreter_with_the_key_file_verifies(tmp_path):
    """Another replica: nothing shared but the key file."""
    path = tmp_path / "feedback.key"
    path.write_text(bytes(range(32)).hex())
    path.chmod(0o600)
    code = ("import sys\nfrom serving.routing.feedback import FeedbackKey, FeedbackKeys, verify\n"
            f"keys = FeedbackKeys(FeedbackKey.from_file({str(path)!r}))\n"
            "print(verify(keys, sys.argv[1], 1_700_000_100, 3600))")
    done = subprocess.run([sys.executable, "-c", code, sign(KEYS, SERVED)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == repr(Served("resnet-v2", Variant.CANDIDATE, 7, NOW))


def test_fuzz_verify_rejects_every_other_string_and_raises_nothing_else():
    rng = random.Random(20240611)
    request_id = sign(KEYS, Served("exp.1-a_b", "baseline", 123_456, NOW))
    alphabet = string.ascii_letters + string.digits + "._-=+/ \n\x00é٣\ud800"
    candidates = [request_id[:n] for n in range(len(request_id))]
    candidates += [request_id[n:] for n in range(1, len(request_id))]
    for i in range(len(request_id)):
        candidates += [request_id[:i] + c + request_id[i + 1:] for c in alphabet
                       if c != request_id[i]]
        candidates += [request_id[:i] + request_id[i + 1:]]
        candidates += [request_id[:i] + c + request_id[i:] for c in alphabet]
    makers = (lambda n: "".join(rng.choice(alphabet) for _ in range(n)),
              lambda n: rng.randbytes(n).decode("latin-1"),
              lambda n: "".join(chr(rng.randrange(0x110000)) for _ in range(n)),
              lambda n: "ab1." + "".join(rng.choice(alphabet) for _ in range(n)))
    candidates += [rng.choice(makers)(rng.randrange(200)) for _ in range(3_000)]
    reasons = {}
    for candidate in candidates:
        if candidate != request_id:
            reason = rejected(candidate)
            reasons[reason] = reasons.get(reason, 0) + 1
    assert set(reasons) == {"malformed", "forged"}, reasons
    assert verify(KEYS, request_id, NOW, DAY).predicted_class == 123_456


def test_a_label_counts_once():
    labels = RecentLabels(capacity=10, window_seconds=60)
    assert labels.first_time("a", NOW) is True
    assert labels.first_time("a", NOW + 1) is False
    assert labels.first_time("b", NOW + 1) is True
    assert labels.first_time("a", NOW + 59.9) is False


def test_after_the_window_a_label_counts_again():
    labels = RecentLabels(capacity=10, window_seconds=60)
    assert labels.first_time("a", NOW)
    assert not labels.first_time("a", NOW + 30)  # a duplicate does not extend the window
    assert labels.first_time("a", NOW + 60)
    assert not labels.first_time("a", NOW + 61)
    assert len(labels) == 1


def test_an_expired_entry_behind_a_newer_one_counts_again():
    """Calls may arrive slightly out of time order from several threads."""
    labels = RecentLabels(capacity=10, window_seconds=60)
    assert labels.first_time("new", NOW + 10)
    assert labels.first_time("old", NOW)
    assert labels.first_time("old", NOW + 65)
    assert not labels.first_time("new", NOW + 65)


def test_an_id_seen_afresh_is_the_last_to_be_evicted():
    labels = RecentLabels(capacity=3, window_seconds=60)
    for request_id, at in (("x", NOW + 10), ("a", NOW), ("b", NOW + 5)):
        assert labels.first_time(request_id, at)
    assert labels.first_time("a", NOW + 65)  # expired behind "x": seen afresh, now the newest
    assert labels.first_time("c", NOW + 66) and labels.first_time("d", NOW + 66)  # evict x, b
    assert not labels.first_time("a", NOW + 67)
    assert labels.first_time("b", NOW + 67)


def test_memory_is_bounded_by_capacity_and_the_oldest_go_first():
    labels = RecentLabels(capacity=100, window_seconds=DAY)
    for i in range(1_000):
        assert labels.first_time(f"id-{i}", NOW + i)
        assert len(labels) <= 100
    assert len(labels) == 100
    assert not labels.first_time("id-999", NOW + 1_000)
    assert not labels.first_time("id-900", NOW + 1_000)
    assert labels.first_time("id-0", NOW + 1_000)  # evicted: the documented limit


@pytest.mark.parametrize(("capacity", "window"), [(0, 60), (10, 0), (10, float("nan"))])
def test_recent_labels_refuses_a_useless_bound(capacity, window):
    with pytest.raises(ValueError, match="capacity"):
        RecentLabels(capacity, window)


def test_threads_count_each_label_exactly_once():
    """Eight replicas' worth of handlers race on the same ids; a switch every microsecond
    makes a check-then-insert without the lock count some twice."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        labels = RecentLabels(capacity=100_000, window_seconds=DAY)
        ids = [f"id-{i}" for i in range(20_000)]
        counted = []
        start = threading.Barrier(8)

        def handler(seed):
            order = random.Random(seed).sample(ids, len(ids))
            start.wait()
            counted.append(sum(labels.first_time(i, NOW) for i in order))

        threads = [threading.Thread(target=handler, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert sum(counted) == len(ids) and len(labels) == len(ids)


def key_file(tmp_path, content: bytes, mode=0o600):
    path = tmp_path / "feedback.key"
    path.write_bytes(content)
    path.chmod(mode)
    return path


SECRET = bytes(range(100, 140))


@pytest.mark.parametrize("content", [
    SECRET.hex().encode() + b"\n", b"  " + SECRET.hex().upper().encode() + b"\r\n",
    base64.b64encode(SECRET) + b"\n", base64.urlsafe_b64encode(SECRET).rstrip(b"="),
    base64.b64encode(SECRET[:32]).rstrip(b"=")])
def test_a_key_file_holds_hex_or_base64(tmp_path, content):
    key = FeedbackKey.from_file(key_file(tmp_path, content))
    assert key.secret in (SECRET, SECRET[:32])


@pytest.mark.parametrize("secret", [bytes(range(200, 240)), b"correct horse battery staple!!!!?"])
def test_a_key_file_holds_raw_bytes(tmp_path, secret):
    assert FeedbackKey.from_file(key_file(tmp_path, secret + b"\n", mode=0o640)).secret == secret


@pytest.mark.parametrize(("content", "problem"), [
    (bytes(range(200, 231)), "31 bytes of secret (read as raw bytes)"),
    (SECRET[:31].hex().encode(), "31 bytes of secret (read as hex)"),
    (base64.b64encode(SECRET[:31]), "31 bytes of secret (read as base64)"),
    (b"  \n", "0 bytes")])
def test_a_short_key_is_refused(tmp_path, content, problem):
    path = key_file(tmp_path, content)
    with pytest.raises(FeedbackKeyError, match=re.escape(problem)) as caught:
        FeedbackKey.from_file(path)
    assert str(path) in str(caught.value)


def test_a_world_readable_key_is_refused_before_it_is_read(tmp_path):
    path = key_file(tmp_path, b"short", mode=0o644)
    with pytest.raises(FeedbackKeyError, match="world-readable") as caught:
        FeedbackKey.from_file(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["missing.key", "."])
def test_an_unreadable_key_file_is_refused(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(FeedbackKeyError, match="cannot read") as caught:
        FeedbackKey.from_file(path)
    assert str(path) in str(caught.value)


def test_a_key_never_shows_its_secret():
    key = FeedbackKey(b"\xaa" * 32)
    assert "aa" not in repr(key).lower() and "aa" not in repr(FeedbackKeys(key)).lower()


@pytest.mark.parametrize("secret", [b"x" * 31, "x" * 64, None])
def test_a_key_is_at_least_32_bytes(secret):
    with pytest.raises(FeedbackKeyError, match="at least 32 bytes"):
        FeedbackKey(secret)


def test_generated_keys_are_32_random_bytes():
    assert FeedbackKey.generate() != FeedbackKey.generate()
    assert len(FeedbackKey.generate().secret) == 32
