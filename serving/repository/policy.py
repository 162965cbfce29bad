"""Version policies: which of a model's versions on disk should be served.

A policy is a small stateless object with one method, ``select``, that takes a snapshot of every
version a source found for one model and returns the versions it wants served. The source adds
the versions that labels point at (``labels.json``) on top, so a labelled version is served
whatever the policy says. Policies are chosen by name once, at start: ``parse_policy("latest:2")``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["All", "Latest", "Specific", "VersionPolicy", "parse_policy"]


class VersionPolicy(Protocol):
    def select(self, versions: Iterable[int]) -> set[int]: ...


@dataclass(frozen=True)
class Latest:
    """The ``n`` highest versions (TF Serving's default, with n=1)."""

    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"latest(n) needs n >= 1; got {self.n}")

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(sorted(versions)[-self.n:])


@dataclass(frozen=True)
class Specific:
    """Exactly these versions, those of them that exist (pinning during an incident)."""

    versions: frozenset[int]

    def __post_init__(self) -> None:
        if not self.versions or min(self.versions) < 1:
            raise ValueError(f"specific() needs positive versions; got {sorted(self.versions)}")

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(versions) & self.versions


@dataclass(frozen=True)
class All:
    """Every version on disk (A/B tests across many versions)."""

    def select(self, versions: Iterable[int]) -> set[int]:
        return set(versions)


def parse_policy(text: str) -> VersionPolicy:
    """``latest``, ``latest:N``, ``all`` or ``specific:V1,V2``; anything else is an error."""
    kind, _, argument = text.partition(":")
    try:
        if kind == "latest":
            return Latest(int(argument) if argument else 1)
        if kind == "all" and not argument:
            return All()
        if kind == "specific" and argument:
            return Specific(frozenset(int(v) for v in argument.split(",")))
    except ValueError as exc:
        raise ValueError(f"bad version policy {text!r}: {exc}") from None
    raise ValueError(
        f"unknown version policy {text!r}; use latest, latest:N, all or specific:V1,V2")
