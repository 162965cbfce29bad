"""The observer: what the data plane reports, and to whom it does not matter.

The data plane calls these hooks; ``observe.metrics.ServingMetrics`` implements them for
Prometheus, and ``NO_OBSERVER`` stands in when metrics are off. Every hook that concerns a
served version names it (model, version), so metrics can compare versions side by side.
Hooks run on request and worker threads: they must be cheap and must not raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from serving.inference.types import Result

__all__ = ["NO_OBSERVER", "Observer"]


class Observer(Protocol):
    def request_done(self, result: Result, labels: list[str], input_bytes: int | None,
                     input_pixels: int | None) -> None:
        """A request answered with ``result`` (the card's ``labels`` name its classes)."""

    def rejected_request(self, reason: str, error_type: str) -> None:
        """A request refused or dropped: the ServingError's reason and class name."""

    def batch(self, model: str, version: int, size: int) -> None:
        """One interpreter call on ``size`` images."""

    def late_results(self, model: str, version: int, count: int) -> None:
        """Results that were ready only after their request's deadline."""


class _NoObserver:
    def request_done(self, result, labels, input_bytes, input_pixels) -> None:
        pass

    def rejected_request(self, reason, error_type) -> None:
        pass

    def batch(self, model, version, size) -> None:
        pass

    def late_results(self, model, version, count) -> None:
        pass


NO_OBSERVER: Observer = _NoObserver()
