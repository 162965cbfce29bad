"""Drift statistics against scipy on known inputs, and the sliding-window monitor."""

import math
import threading
import time

import numpy as np
import pytest
from scipy.special import rel_entr
from scipy.stats import entropy, ks_2samp

from serving.card import ReferenceStats
from serving.observe.drift import DEFAULT_EPS, DriftMonitor, ks_binned, psi
from serving.reference_stats import (
    BRIGHTNESS_EDGES,
    CONFIDENCE_EDGES,
    brightness,
    histogram,
    reference_stats,
)

NUM_CLASSES = 10
PRIOR = np.full(NUM_CLASSES, 1 / NUM_CLASSES)
SHIFTED_PRIOR = np.array([0.6] + [0.4 / 9] * 9)


def traffic(rng, n, shifted=False):
    """(classes, confidences, brightnesses) of n synthetic requests."""
    if shifted:  # one class dominates, the model is unsure, the images are dark
        return (rng.choice(NUM_CLASSES, n, p=SHIFTED_PRIOR), rng.beta(2, 2, n),
                rng.normal(60, 20, n))
    return rng.choice(NUM_CLASSES, n, p=PRIOR), rng.beta(5, 1.5, n), rng.normal(120, 30, n)


def make_reference(n=50_000, seed=0) -> ReferenceStats:
    classes, conf, bright = traffic(np.random.default_rng(seed), n)
    return ReferenceStats(
        class_prior=(np.bincount(classes, minlength=NUM_CLASSES) / n).tolist(),
        confidence=histogram(conf, CONFIDENCE_EDGES),
        brightness=histogram(bright, BRIGHTNESS_EDGES),
    )


@pytest.fixture(scope="module")
def reference():
    return make_reference()


# --- PSI -------------------------------------------------------------------------------------


def test_psi_hand_computed():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 (ln 2 + ln 1.5) = 0.25 ln 3
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(3), rel=1e-12)
    assert psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(3), rel=1e-12)  # counts


def test_psi_identical_is_zero_and_scale_free():
    e = np.array([0.1, 0.2, 0.3, 0.4])
    assert psi(e, e) == 0.0
    assert psi(e, 1000 * e) == pytest.approx(0.0, abs=1e-15)
    assert psi([0, 3, 1], [0, 30, 10]) == pytest.approx(0.0, abs=1e-15)  # both empty: no term


@pytest.mark.parametrize("seed", range(5))
def test_psi_symmetric_nonnegative_and_equals_two_kl(seed):
    rng = np.random.default_rng(seed)
    e, a = rng.dirichlet(np.full(12, 5.0), size=2)
    assert min(e.min(), a.min()) > DEFAULT_EPS  # no clipping, so the identity is exact
    assert psi(e, a) == pytest.approx(psi(a, e), rel=1e-12)
    assert psi(e, a) > 0
    assert psi(e, a) == pytest.approx(entropy(a, e) + entropy(e, a), rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_psi_clips_empty_bins_at_eps(seed):
    rng = np.random.default_rng(seed)
    e = rng.integers(0, 5, 20).astype(float)  # counts with empty bins on both sides
    a = rng.integers(0, 5, 20).astype(float)
    e[0], a[1] = 0, 0
    ec = np.maximum(e / e.sum(), DEFAULT_EPS)
    ac = np.maximum(a / a.sum(), DEFAULT_EPS)
    expected = rel_entr(ac, ec).sum() + rel_entr(ec, ac).sum()
    assert math.isfinite(psi(e, a))
    assert psi(e, a) == pytest.approx(expected, rel=1e-10)


def test_psi_thresholds():
    assert psi(PRIOR, SHIFTED_PRIOR) > 0.2  # class mix moved heavily
    slight = PRIOR + np.array([0.02, -0.02, 0.01, -0.01, 0, 0, 0, 0, 0, 0])
    assert psi(PRIOR, slight) < 0.1


@pytest.mark.parametrize(
    "expected, actual, message",
    [
        ([0.5, 0.5], [1.0], "same bins"),
        ([0.5, -0.5], [0.5, 0.5], ">= 0"),
        ([0, 0], [0.5, 0.5], "empty"),
        ([[0.5, 0.5]], [[0.5, 0.5]], "1-D"),
    ],
)
def test_psi_rejects_bad_input(expected, actual, message):
    with pytest.raises(ValueError, match=message):
        psi(expected, actual)


# --- KS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_ks_equals_scipy_for_samples_on_the_edges(seed):
    rng = np.random.default_rng(seed)
    on_edges = CONFIDENCE_EDGES[:-1]  # left edges of the bins (the top edge shares the last bin)
    ref = rng.choice(on_edges, 500, p=rng.dirichlet(np.ones(len(on_edges))))
    live = rng.choice(on_edges, 300, p=rng.dirichlet(np.ones(len(on_edges))))
    ref_counts = histogram(ref, CONFIDENCE_EDGES).counts
    stat = ks_binned(ref_counts, CONFIDENCE_EDGES, live_values=live)
    assert stat == pytest.approx(ks_2samp(ref, live).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_ks_equals_scipy_with_edges_at_every_sample(seed):
    rng = np.random.default_rng(seed)
    ref, live = rng.beta(5, 1.5, 400), rng.beta(3, 2, 250)
    union = np.unique(np.concatenate([ref, live]))
    edges = np.append(union, union[-1] + 1.0)  # one past the max: the last bin is closed
    stat = ks_binned(histogram(ref, edges).counts, edges, live_values=live)
    assert stat == pytest.approx(ks_2samp(ref, live).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_ks_is_a_lower_bound_for_general_samples(seed):
    rng = np.random.default_rng(seed)
    ref, live = rng.beta(5, 1.5, 1000), rng.beta(*rng.uniform(1, 6, 2), 200)
    stat = ks_binned(histogram(ref, CONFIDENCE_EDGES).counts, CONFIDENCE_EDGES, live_values=live)
    exact = ks_2samp(ref, live).statistic
    assert 0 <= stat <= exact + 1e-12
    assert stat > exact - 0.1  # 20 bins of 0.05: the CDFs cannot move far inside one bin here


def test_ks_misses_steps_inside_the_closed_last_bin():
    # The last two edges, 0.95 and 1.0, share the bin [0.95, 1.0]: binned, they look the same.
    ref, live = np.full(10, CONFIDENCE_EDGES[-2]), np.full(10, CONFIDENCE_EDGES[-1])
    assert ks_2samp(ref, live).statistic == 1.0
    assert ks_binned(histogram(ref, CONFIDENCE_EDGES).counts, CONFIDENCE_EDGES,
                     live_values=live) == 0.0


def test_ks_values_and_counts_agree():
    rng = np.random.default_rng(3)
    ref_counts = histogram(rng.beta(5, 1.5, 1000), CONFIDENCE_EDGES).counts
    live = rng.beta(2, 2, 300)
    from_values = ks_binned(ref_counts, CONFIDENCE_EDGES, live_values=live)
    from_counts = ks_binned(ref_counts, CONFIDENCE_EDGES,
                            live_counts=histogram(live, CONFIDENCE_EDGES).counts)
    assert from_values == from_counts > 0.2


def test_ks_rejects_bad_input():
    counts = [1] * 20
    with pytest.raises(ValueError, match="exactly one"):
        ks_binned(counts, CONFIDENCE_EDGES)
    with pytest.raises(ValueError, match="exactly one"):
        ks_binned(counts, CONFIDENCE_EDGES, live_values=[0.5], live_counts=counts)
    with pytest.raises(ValueError, match="len\\(edges\\)"):
        ks_binned(counts[:-1], CONFIDENCE_EDGES, live_counts=counts)
    with pytest.raises(ValueError, match="same bins"):
        ks_binned(counts, CONFIDENCE_EDGES, live_counts=counts[:-1])
    with pytest.raises(ValueError, match="NaN"):
        ks_binned(counts, CONFIDENCE_EDGES, live_values=[0.5, float("nan")])


# --- binning ---------------------------------------------------------------------------------


def awkward_values(edges, rng, size=600):
    """Every edge, its float neighbours, values outside the range, then random values."""
    edges = np.asarray(edges, dtype=np.float64)
    awkward = np.concatenate([
        edges,
        np.nextafter(edges, -np.inf),
        np.nextafter(edges, np.inf),
        [edges[0] - 1, edges[-1] + 1, -np.inf, np.inf, 0.0, 0.05, 0.95, 1.0, 255.999, 256.0],
    ])
    randoms = rng.uniform(edges[0], edges[-1], size - len(awkward))
    return rng.permutation(np.append(awkward, randoms))


def test_observe_bins_exactly_like_reference_histogram(reference):
    rng = np.random.default_rng(0)
    conf = awkward_values(CONFIDENCE_EDGES, rng)
    bright = awkward_values(BRIGHTNESS_EDGES, rng)
    classes = rng.integers(0, NUM_CLASSES, len(conf))

    one_by_one = DriftMonitor(reference, NUM_CLASSES, window=len(conf))
    for c, k, b in zip(classes, conf, bright, strict=True):
        one_by_one.observe(c, k, b)
    batched = DriftMonitor(reference, NUM_CLASSES, window=len(conf))
    batched.observe_batch(classes, conf, bright)
    float32 = DriftMonitor(reference, NUM_CLASSES, window=len(conf))
    for c, k, b in zip(classes, conf.astype(np.float32), bright.astype(np.float32), strict=True):
        float32.observe(c, k, b)

    expected = {
        "class": np.bincount(classes, minlength=NUM_CLASSES).tolist(),
        "confidence": histogram(conf, CONFIDENCE_EDGES).counts,
        "brightness": histogram(bright, BRIGHTNESS_EDGES).counts,
    }
    assert one_by_one.counts() == expected
    assert batched.counts() == expected
    assert float32.counts() == {
        "class": expected["class"],
        "confidence": histogram(conf.astype(np.float32), CONFIDENCE_EDGES).counts,
        "brightness": histogram(bright.astype(np.float32), BRIGHTNESS_EDGES).counts,
    }


def test_validation_traffic_replayed_reads_as_no_drift():
    """The card's own reference_stats, then the same images one by one as the server sees them."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(400, NUM_CLASSES)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    images = rng.integers(0, 256, (400, 8, 8, 3), dtype=np.uint8)
    images[:50] = 0  # a dark corner: the first bin, brightness exactly 0.0
    images[50:60] = 255  # the top edge, 255 < 256
    monitor = DriftMonitor(reference_stats(probabilities, images), NUM_CLASSES, window=400)
    for p, image in zip(probabilities, images, strict=True):
        monitor.observe(p.argmax(), p.max(), brightness(image[None])[0])
    snap = monitor.snapshot()
    assert snap["window_size"] == 400
    assert snap["class_mix_psi"] == pytest.approx(0.0, abs=1e-12)
    assert snap["brightness_psi"] == pytest.approx(0.0, abs=1e-12)
    assert snap["confidence_ks"] == pytest.approx(0.0, abs=1e-12)


# --- DriftMonitor ----------------------------------------------------------------------------


def test_zero_drift_below_min_samples(reference):
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(reference, NUM_CLASSES, window=1000, min_samples=100)
    assert monitor.snapshot() == {"window_size": 0, "class_mix_psi": 0.0,
                                  "brightness_psi": 0.0, "confidence_ks": 0.0}
    classes, conf, bright = traffic(rng, 100, shifted=True)
    monitor.observe_batch(classes[:99], conf[:99], bright[:99])
    assert monitor.snapshot() == {"window_size": 99, "class_mix_psi": 0.0,
                                  "brightness_psi": 0.0, "confidence_ks": 0.0}
    monitor.observe(classes[99], conf[99], bright[99])
    snap = monitor.snapshot()
    assert snap["window_size"] == 100
    assert min(snap["class_mix_psi"], snap["brightness_psi"], snap["confidence_ks"]) > 0.2


def test_window_keeps_only_the_last_observations(reference):
    rng = np.random.default_rng(0)
    a = traffic(rng, 1000)
    b = traffic(rng, 500, shifted=True)
    evicted = DriftMonitor(reference, NUM_CLASSES, window=500)
    for batch in (a, b):
        for c, k, br in zip(*batch, strict=True):
            evicted.observe(c, k, br)
    only_b = DriftMonitor(reference, NUM_CLASSES, window=500)
    only_b.observe_batch(*b)
    assert evicted.counts() == only_b.counts()
    assert evicted.snapshot() == only_b.snapshot()
    assert sum(evicted.counts()["class"]) == 500


def test_batch_longer_than_the_window(reference):
    rng = np.random.default_rng(0)
    classes, conf, bright = traffic(rng, 1234)
    whole = DriftMonitor(reference, NUM_CLASSES, window=300)
    whole.observe_batch(classes, conf, bright)
    in_pieces = DriftMonitor(reference, NUM_CLASSES, window=300)
    for start in range(0, 1234, 97):
        piece = slice(start, start + 97)
        in_pieces.observe_batch(classes[piece], conf[piece], bright[piece])
    tail = DriftMonitor(reference, NUM_CLASSES, window=300)
    tail.observe_batch(classes[-300:], conf[-300:], bright[-300:])
    assert whole.counts() == in_pieces.counts() == tail.counts()


def test_reference_traffic_reads_stable(reference):
    monitor = DriftMonitor(reference, NUM_CLASSES, window=2000)
    monitor.observe_batch(*traffic(np.random.default_rng(7), 2000))
    snap = monitor.snapshot()
    assert snap["window_size"] == 2000
    assert snap["class_mix_psi"] < 0.05
    assert snap["brightness_psi"] < 0.05
    assert snap["confidence_ks"] < 0.05


def test_shifted_traffic_reads_drifted(reference):
    monitor = DriftMonitor(reference, NUM_CLASSES, window=2000)
    monitor.observe_batch(*traffic(np.random.default_rng(7), 2000, shifted=True))
    snap = monitor.snapshot()
    assert snap["class_mix_psi"] > 0.2
    assert snap["brightness_psi"] > 0.2
    assert snap["confidence_ks"] > 0.2


def test_observe_from_many_threads(reference):
    monitor = DriftMonitor(reference, NUM_CLASSES, window=1000)
    start = threading.Barrier(8)

    def worker(seed):
        classes, conf, bright = traffic(np.random.default_rng(seed), 3000)
        start.wait()
        for i, (c, k, b) in enumerate(zip(classes, conf, bright, strict=True)):
            monitor.observe(c, k, b)
            if i % 500 == 0:
                monitor.snapshot()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = monitor.counts()
    assert monitor.snapshot()["window_size"] == 1000
    assert {name: sum(c) for name, c in counts.items()} == dict.fromkeys(counts, 1000)
    assert min(min(c) for c in counts.values()) >= 0

    # Evicting every racy observation must leave exactly the new ones: no count was lost.
    for _ in range(1000):
        monitor.observe(3, 0.5, 100.0)
    counts = monitor.counts()
    assert counts["class"][3] == counts["confidence"][10] == counts["brightness"][6] == 1000


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_classes=9), "class_prior has 10 entries for 9"),
        (dict(window=0), "window must be >= 1"),
        (dict(window=50, min_samples=100), "min_samples must be in"),
        (dict(min_samples=0), "min_samples must be in"),
    ],
)
def test_monitor_rejects_bad_config(reference, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DriftMonitor(reference, **{"num_classes": NUM_CLASSES, **kwargs})


def test_monitor_rejects_bad_observations(reference):
    monitor = DriftMonitor(reference, NUM_CLASSES)
    with pytest.raises(ValueError, match="predicted_class must be in"):
        monitor.observe(NUM_CLASSES, 0.5, 100.0)
    with pytest.raises(ValueError, match="NaN"):
        monitor.observe(1, float("nan"), 100.0)
    with pytest.raises(TypeError):
        monitor.observe(1.0, 0.5, 100.0)
    with pytest.raises(ValueError, match="predicted classes must be in"):
        monitor.observe_batch([0, -1], [0.5, 0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="three \\(N,\\) arrays"):
        monitor.observe_batch([0, 1], [0.5], [1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        monitor.observe_batch([0, 1], [0.5, 0.5], [1.0, float("nan")])
    assert monitor.snapshot()["window_size"] == 0  # nothing half-recorded


def test_benchmark_observe(reference, capsys):
    """Hot-path cost, printed rather than asserted (run with -s to see it)."""
    monitor = DriftMonitor(reference, NUM_CLASSES, window=1000)
    classes, conf, bright = traffic(np.random.default_rng(0), 20_000)
    rows = list(zip(classes.tolist(), conf.tolist(), bright.tolist(), strict=True))
    monitor.observe_batch(classes[:1000], conf[:1000], bright[:1000])  # full: evicts every call

    def per_call(fn, n, repeat=5):
        best = math.inf
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best / n * 1e6

    def observe_all():
        for c, k, b in rows:
            monitor.observe(c, k, b)

    def observe_32():
        monitor.observe_batch(classes[:32], conf[:32], bright[:32])

    lines = [
        f"observe (python floats)  {per_call(observe_all, len(rows)):.2f} us/call",
        f"observe_batch(32)        {per_call(observe_32, 32, 200):.2f} us/image",
        f"snapshot                 {per_call(monitor.snapshot, 1, 200):.1f} us/call",
    ]
    for size in (32, 224):
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        cost = per_call(lambda image=image: brightness(image[None])[0], 1, 200)
        lines.append(f"brightness {size}x{size} uint8 {cost:.1f} us/image")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
