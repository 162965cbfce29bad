"""Assignment: stable across processes, monotone over a ramp, on target, independent by salt."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from serving.routing.assignment import BUCKETS, Variant, bucket, share_in_basis_points, variant_for
from tests.conftest import ROOT

KEYS = [f"user-{i}" for i in range(100_000)]


@pytest.fixture(scope="module")
def buckets() -> np.ndarray:
    return np.array([bucket("exp-1", key) for key in KEYS])


def candidates(bucket_indices, share: float) -> np.ndarray:
    return np.array([variant_for(b, share) is Variant.CANDIDATE for b in bucket_indices])


def test_the_bucket_is_the_specified_hash():
    """The wire format other replicas (in any language) must reproduce."""
    message = (5).to_bytes(8, "big") + b"exp-1" + (6).to_bytes(8, "big") + b"user-1"
    digest = hashlib.blake2b(message, digest_size=8).digest()
    assert bucket("exp-1", "user-1") == int.from_bytes(digest, "big") % BUCKETS


@pytest.mark.parametrize(("salt", "key", "expected"), [
    ("exp-1", "user-1", 546), ("exp-1", "user-2", 1620), ("exp-2", "user-1", 9145),
    ("a", "bc", 7671), ("ab", "c", 303), ("", "", 3166)])
def test_buckets_never_change(salt, key, expected):
    """Changing the hash would reassign every user of a running experiment."""
    assert bucket(salt, key) == expected


def test_the_encoding_separates_salt_from_key():
    assert bucket("a", "bc") != bucket("ab", "c")
    assert bucket("", "ab") != bucket("a", "b")


def test_a_fresh_interpreter_agrees(buckets):
    """Another process, with another string-hash seed, computes the same buckets."""
    code = ("from serving.routing.assignment import bucket\n"
            "print(','.join(str(bucket('exp-1', f'user-{i}')) for i in range(1000)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert [int(b) for b in done.stdout.strip().split(",")] == buckets[:1000].tolist()


def test_raising_the_share_never_moves_a_key_back(buckets):
    ramp = [candidates(buckets[:10_000], share) for share in (0.05, 0.25, 0.50, 1.0)]
    for before, after in zip(ramp, ramp[1:], strict=False):
        assert not np.any(before & ~after)
        assert after.sum() > before.sum()
    assert ramp[-1].all()


@pytest.mark.parametrize("share", [0.01, 0.05, 0.25, 0.5, 0.57, 0.9])
def test_the_realised_split_is_on_target(buckets, share):
    assert abs(candidates(buckets, share).mean() - share) < 0.01


def test_a_share_of_zero_sends_nobody_and_one_sends_everybody():
    assert variant_for(0, 0.0) is Variant.BASELINE
    assert variant_for(BUCKETS - 1, 1.0) is Variant.CANDIDATE


def test_shares_round_to_basis_points_rather_than_truncate():
    assert share_in_basis_points(0.57) == 5_700  # int(0.57 * 10_000) is 5,699
    assert variant_for(5_699, 0.57) is Variant.CANDIDATE


def test_out_of_range_values_are_refused():
    for bad in (lambda: variant_for(BUCKETS, 0.5), lambda: variant_for(-1, 0.5),
                lambda: variant_for(0, 1.5), lambda: variant_for(0, -0.1)):
        with pytest.raises(ValueError):
            bad()


def test_salts_decorrelate(buckets):
    """Two experiments on the same users assign them independently of each other."""
    other = np.array([bucket("exp-2", key) for key in KEYS[:20_000]])
    same = buckets[:20_000]
    assert abs(np.corrcoef(same, other)[0, 1]) < 0.03
    in_first, in_second = candidates(same, 0.5), candidates(other, 0.5)
    assert abs((in_first & in_second).mean() - 0.25) < 0.015
