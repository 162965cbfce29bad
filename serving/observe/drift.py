"""Drift monitoring: live traffic of one model version against its card's reference statistics.

What it is: a sliding window over the last ``window`` classified images that keeps three
histograms (predicted class, top-1 confidence, input brightness) and compares them with the
card's ``ReferenceStats``, which describe the validation split as the model saw it.

Who calls it: each batch worker calls ``observe_batch`` once per batch it ran
(``inference.runner``), whether or not metrics are exported; the metrics collector calls
``snapshot`` at scrape time and sets the gauges of monitoring/METRICS.md
(``sightline_drift_psi``, ``sightline_drift_ks``, ``sightline_drift_window_size``), one series
per served version. One monitor per loaded model version.

What it guarantees:
- Live values are binned exactly as ``serving.reference_stats.histogram`` bins the reference, on
  the card's own edges: bins are ``[e[i], e[i+1])``, the last one closed ``[e[n-1], e[n]]``, and
  values outside the edges count in the first or last bin.
- ``observe`` is thread-safe and O(1): a ring buffer of bin indices plus running counts; the new
  observation increments its bins and the one it evicts decrements its bins.
- ``snapshot`` reports 0.0 drift until the window holds ``min_samples`` observations.
"""

from __future__ import annotations

import math
import operator
import threading
from bisect import bisect_right

import numpy as np

from serving.card import Histogram, ReferenceStats

__all__ = ["DEFAULT_EPS", "DriftMonitor", "drift_statistics", "ks_binned", "psi"]

# Floor for a bin's proportion in PSI. An empty bin (common: a class not predicted yet in the
# window, the darkest brightness bin) would make ln(a / e) infinite. 1e-4 is below one
# observation in a window of 1000 (1e-3), so one sample still reads as different from none,
# while an empty bin that the reference fills with share p adds a finite (p - 1e-4) ln(p / 1e-4):
# about 0.3 for p = 0.05, which is real drift, and 0.002 for p = 0.001, which is noise.
DEFAULT_EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = DEFAULT_EPS) -> float:
    """Population Stability Index of ``actual`` against ``expected``: sum((a - e) ln(a / e)).

    Both are counts or proportions over the same bins; each is normalised to proportions, then
    clipped below at ``eps`` (see ``DEFAULT_EPS``) without renormalising. PSI is symmetric and
    equals KL(a || e) + KL(e || a). Rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted.
    """
    e = _proportions(expected, "expected")
    a = _proportions(actual, "actual")
    if e.shape != a.shape:
        raise ValueError(f"psi needs the same bins; got {e.shape[0]} expected, {a.shape[0]} actual")
    if not eps > 0:
        raise ValueError(f"psi eps must be > 0; got {eps}")
    e = np.maximum(e, eps)
    a = np.maximum(a, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_binned(
    reference_counts: np.ndarray,
    edges: np.ndarray,
    *,
    live_values: np.ndarray | None = None,
    live_counts: np.ndarray | None = None,
) -> float:
    """Kolmogorov-Smirnov statistic, max |F_ref - F_live|, with the CDFs read at the bin edges.

    The reference is known only as a histogram on ``edges``; the live side is given either as
    raw ``live_values`` (binned here like ``reference_stats.histogram``) or as ``live_counts`` on
    the same edges. Cumulative counts give both empirical CDFs just below each interior edge,
    F(e[i]-), exactly, so the result is the maximum of |F_ref - F_live| over those points. Each
    is a value (a left limit) of the difference of the two empirical CDFs, so this is a lower
    bound of the exact two-sample KS statistic (``scipy.stats.ks_2samp``). It equals it when
    every sample of both sets lies on one of e[0] .. e[n-1], i.e. on the left edge of its bin:
    the exact difference is then constant between edges. (The last bin is closed, so a sample
    on the top edge e[n] shares a bin with e[n-1] and the step between them is lost.)
    """
    edges = np.asarray(edges, dtype=np.float64)
    ref = _counts(reference_counts, "reference_counts")
    if edges.ndim != 1 or len(edges) != len(ref) + 1:
        raise ValueError(
            f"ks_binned needs len(edges) == len(reference_counts) + 1; got {edges.shape} edges "
            f"for {len(ref)} counts"
        )
    if (live_values is None) == (live_counts is None):
        raise ValueError("ks_binned needs exactly one of live_values or live_counts")
    if live_values is not None:
        live = np.bincount(_bin_indices(live_values, edges), minlength=len(ref))
    else:
        live = _counts(live_counts, "live_counts")
        if len(live) != len(ref):
            raise ValueError(
                f"ks_binned needs the same bins; got {len(ref)} reference, {len(live)} live counts"
            )
    ref_cdf = np.cumsum(ref) / _total(ref, "reference_counts")
    live_cdf = np.cumsum(live) / _total(live, "live")
    return float(np.max(np.abs(ref_cdf - live_cdf)))


class DriftMonitor:
    """Sliding-window drift of one model version against its card's ``ReferenceStats``."""

    def __init__(
        self,
        reference: ReferenceStats,
        num_classes: int,
        window: int = 1000,
        min_samples: int = 100,
    ) -> None:
        if len(reference.class_prior) != num_classes:
            raise ValueError(
                f"reference.class_prior has {len(reference.class_prior)} entries for "
                f"{num_classes} classes"
            )
        if window < 1:
            raise ValueError(f"drift window must be >= 1; got {window}")
        if not 1 <= min_samples <= window:
            raise ValueError(
                f"drift min_samples must be in [1, window={window}]; got {min_samples}"
            )
        _proportions(reference.class_prior, "reference.class_prior")  # raises if empty
        self._reference = reference
        self._num_classes = num_classes
        self._window = window
        self._min_samples = min_samples
        self._conf_edges, self._conf_hi = _edges(reference.confidence, "confidence")
        self._bright_edges, self._bright_hi = _edges(reference.brightness, "brightness")

        self._lock = threading.Lock()
        # Ring of (class, confidence bin, brightness bin); plain lists of ints are the cheapest
        # thing to index from Python (numpy scalars cost ~100 ns per access).
        self._ring: list[tuple[int, int, int] | None] = [None] * window
        self._next = 0  # slot the next observation overwrites
        self._size = 0
        self._class_counts = [0] * num_classes
        self._conf_counts = [0] * (len(self._conf_edges) - 1)
        self._bright_counts = [0] * (len(self._bright_edges) - 1)

    @property
    def window(self) -> int:
        return self._window

    @property
    def min_samples(self) -> int:
        return self._min_samples

    def observe(self, predicted_class: int, confidence: float, brightness: float) -> None:
        """Record one classified image: its top-1 class and probability, its mean luma."""
        c = operator.index(predicted_class)  # an int or numpy integer; a float is a bug
        if not 0 <= c < self._num_classes:
            raise ValueError(f"predicted_class must be in [0, {self._num_classes}); got {c}")
        conf = float(confidence)
        bright = float(brightness)
        if math.isnan(conf) or math.isnan(bright):
            raise ValueError(f"drift observation is NaN: confidence={conf}, brightness={bright}")
        # bisect over the interior edges e[1] .. e[n-1] gives the histogram's bin directly.
        k = bisect_right(self._conf_edges, conf, 1, self._conf_hi) - 1
        b = bisect_right(self._bright_edges, bright, 1, self._bright_hi) - 1
        with self._lock:
            self._push(c, k, b)

    def observe_batch(self, classes, confidences, brightnesses) -> None:
        """``observe`` for (N,) arrays, binned with numpy; the window update is still O(N)."""
        classes = np.asarray(classes)
        conf = np.asarray(confidences, dtype=np.float64)
        bright = np.asarray(brightnesses, dtype=np.float64)
        if not classes.ndim == conf.ndim == bright.ndim == 1 or not (
            len(classes) == len(conf) == len(bright)
        ):
            raise ValueError(
                f"observe_batch needs three (N,) arrays; got shapes {classes.shape}, "
                f"{conf.shape}, {bright.shape}"
            )
        if len(classes) == 0:
            return
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"observe_batch classes must be integers; got {classes.dtype}")
        if classes.min() < 0 or classes.max() >= self._num_classes:
            raise ValueError(
                f"predicted classes must be in [0, {self._num_classes}); got "
                f"{classes.min()} .. {classes.max()}"
            )
        k = _bin_indices(conf, self._conf_edges, "confidence")
        b = _bin_indices(bright, self._bright_edges, "brightness")
        tail = slice(-self._window, None)  # older items would be evicted by this same batch
        rows = zip(classes[tail].tolist(), k[tail].tolist(), b[tail].tolist(), strict=True)
        with self._lock:
            for c, ki, bi in rows:
                self._push(c, ki, bi)

    def _push(self, c: int, k: int, b: int) -> None:
        """Put one observation in the ring, evicting the oldest; caller holds the lock."""
        i = self._next
        old = self._ring[i]
        if old is not None:
            self._class_counts[old[0]] -= 1
            self._conf_counts[old[1]] -= 1
            self._bright_counts[old[2]] -= 1
        else:
            self._size += 1
        self._ring[i] = (c, k, b)
        self._class_counts[c] += 1
        self._conf_counts[k] += 1
        self._bright_counts[b] += 1
        self._next = i + 1 if i + 1 < self._window else 0

    def counts(self) -> dict[str, list[int]]:
        """The window's live histograms: {"class", "confidence", "brightness"} -> counts."""
        with self._lock:
            return {
                "class": list(self._class_counts),
                "confidence": list(self._conf_counts),
                "brightness": list(self._bright_counts),
            }

    def snapshot(self) -> dict[str, float | int]:
        """{"window_size", "class_mix_psi", "brightness_psi", "confidence_ks"} for the gauges.

        The counts are copied under the lock; the statistics (a few dozen bins) are computed
        outside it, so a scrape never holds up ``observe`` for long.
        """
        with self._lock:
            counts = {"class": list(self._class_counts), "confidence": list(self._conf_counts),
                      "brightness": list(self._bright_counts)}
        return drift_statistics(self._reference, counts, self._min_samples)


def drift_statistics(reference: ReferenceStats, counts: dict[str, list[int]],
                     min_samples: int) -> dict[str, float | int]:
    """``snapshot``'s figures from window counts (``DriftMonitor.counts``' shape), so counts
    summed over several processes' windows give the drift of all their traffic."""
    n = int(sum(counts["class"]))
    if n < min_samples:
        return {"window_size": n, "class_mix_psi": 0.0, "brightness_psi": 0.0,
                "confidence_ks": 0.0}
    return {
        "window_size": n,
        "class_mix_psi": psi(reference.class_prior, counts["class"]),
        "brightness_psi": psi(reference.brightness.counts, counts["brightness"]),
        "confidence_ks": ks_binned(reference.confidence.counts, reference.confidence.edges,
                                   live_counts=counts["confidence"]),
    }


def _edges(histogram: Histogram, name: str) -> tuple[list[float], int]:
    """The card's edges as a list of floats for bisect, and the index of the top edge."""
    edges = [float(e) for e in histogram.edges]
    if len(edges) < 2 or any(not lo < hi for lo, hi in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"reference.{name} edges must be >= 2 and strictly ascending; got {edges}")
    _total(_counts(histogram.counts, f"reference.{name}.counts"), f"reference.{name}")
    return edges, len(edges) - 1


def _bin_indices(values, edges, name: str = "live_values") -> np.ndarray:
    """(N,) values -> (N,) bin indices, as ``reference_stats.histogram`` bins them."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(values).any():
        raise ValueError(f"{name} holds NaN")
    edges = np.asarray(edges, dtype=np.float64)
    return np.searchsorted(edges[1:-1], values, side="right")


def _counts(values, name: str) -> np.ndarray:
    counts = np.asarray(values, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array; got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must be finite and >= 0; got {counts.tolist()}")
    return counts


def _total(counts: np.ndarray, name: str) -> float:
    total = float(counts.sum())
    if total <= 0:
        raise ValueError(f"{name} is empty (all counts are 0)")
    return total


def _proportions(values, name: str) -> np.ndarray:
    counts = _counts(values, name)
    return counts / _total(counts, name)
