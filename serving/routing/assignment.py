"""Assignment: which arm of an experiment a request key belongs to.

What it is: ``bucket(salt, key)`` maps a (salt, key) pair to one of ``BUCKETS`` buckets with a
cryptographic hash, and ``variant_for(bucket, candidate_share)`` turns a bucket into an arm.

Who calls it: the router, once per request, with the experiment's salt and a stable key (a
client or session id, so one caller keeps seeing one model); offline analysis, to recompute an
assignment from logged keys.

What it guarantees:
- Stateless and portable: the bucket depends only on the bytes of salt and key (BLAKE2b over a
  length-prefixed UTF-8 encoding, so ``("a", "bc")`` and ``("ab", "c")`` differ), never on
  Python's per-process ``hash``; every replica, process and language that follows this spec
  agrees.
- A monotone ramp: a key is the candidate's iff its bucket is below the share in basis points,
  so raising the share only ever moves keys from baseline to candidate.
- Independent experiments: a different salt gives an unrelated bucket for the same key.
"""

from __future__ import annotations

import enum
import hashlib

__all__ = ["BUCKETS", "Variant", "bucket", "share_in_basis_points", "variant_for"]

BUCKETS = 10_000  # basis points: a share is resolved to 0.01 %
_LENGTH_BYTES = 8  # each field's UTF-8 length, big-endian, before the field itself


class Variant(enum.StrEnum):
    BASELINE = "baseline"
    CANDIDATE = "candidate"


def _length_prefixed(*fields: str) -> bytes:
    parts = []
    for field in fields:
        encoded = field.encode("utf-8")
        parts.append(len(encoded).to_bytes(_LENGTH_BYTES, "big") + encoded)
    return b"".join(parts)


def bucket(salt: str, key: str) -> int:
    """The key's bucket in ``[0, BUCKETS)`` for the experiment named by ``salt``.

    64 hash bits reduced modulo 10,000: the modulo bias is below 1e-15 per bucket."""
    digest = hashlib.blake2b(_length_prefixed(salt, key), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def share_in_basis_points(candidate_share: float) -> int:
    """A fraction in [0, 1] as whole basis points, rounded so that 0.57 is 5,700 and not the
    5,699 that ``int(0.57 * 10_000)`` gives."""
    if not 0.0 <= candidate_share <= 1.0:
        raise ValueError(f"candidate_share must be in [0, 1], got {candidate_share!r}")
    return round(candidate_share * BUCKETS)


def variant_for(bucket_index: int, candidate_share: float) -> Variant:
    """The candidate iff the bucket lies below the candidate's share (a fraction in [0, 1])."""
    if not 0 <= bucket_index < BUCKETS:
        raise ValueError(f"bucket must be in [0, {BUCKETS}), got {bucket_index!r}")
    if bucket_index < share_in_basis_points(candidate_share):
        return Variant.CANDIDATE
    return Variant.BASELINE
