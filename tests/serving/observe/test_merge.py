"""Merging the workers' expositions: every counter and histogram sample is the sum over processes,
gauges follow their rule, and each process keeps its own memory and CPU."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serving.card import Histogram as Bins
from serving.card import ReferenceStats
from serving.observe.drift import drift_statistics
from serving.observe.merge import MergedCollector, merge, with_drift_of_all


def exposition(requests: int, latencies: list[float], in_flight: int, loaded: int,
               rss: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("sightline_requests", "Requests.", ["model"], registry=registry)
    counter.labels("pets").inc(requests)
    counter.labels("cars").inc(1)
    histogram = Histogram("sightline_request_latency_seconds", "Latency.", ["model"],
                          buckets=(0.01, 0.1, 1.0), registry=registry)
    for seconds in latencies:
        histogram.labels("pets").observe(seconds)
    Gauge("sightline_in_flight_requests", "In flight.", registry=registry).set(in_flight)
    Gauge("sightline_model_loaded", "Loaded.", ["model"], registry=registry).labels(
        "pets").set(loaded)
    Gauge("sightline_drift_threshold", "Levels.", ["level"], registry=registry).labels(
        "warn").set(0.1)
    Gauge("process_resident_memory_bytes", "RSS.", registry=registry).set(rss)
    return generate_latest(registry).decode()


def values(families) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families for s in family.samples if not s.name.endswith("_created")}


def test_counters_and_histograms_are_summed_and_gauges_follow_their_rule():
    merged = values(merge([
        ("0", exposition(3, [0.005, 0.5], in_flight=2, loaded=1, rss=100.0)),
        ("1", exposition(4, [0.05, 5.0, 0.005], in_flight=5, loaded=0, rss=120.0))]))
    assert merged[("sightline_requests_total", (("model", "pets"),))] == 7
    assert merged[("sightline_requests_total", (("model", "cars"),))] == 2
    bucket = lambda le: merged[("sightline_request_latency_seconds_bucket",  # noqa: E731
                                (("le", le), ("model", "pets")))]
    assert [bucket(le) for le in ("0.01", "0.1", "1.0", "+Inf")] == [2, 3, 4, 5]
    assert merged[("sightline_request_latency_seconds_count", (("model", "pets"),))] == 5
    assert abs(merged[("sightline_request_latency_seconds_sum", (("model", "pets"),))]
               - 5.56) < 1e-9
    assert merged[("sightline_in_flight_requests", ())] == 7  # held: summed
    assert merged[("sightline_model_loaded", (("model", "pets"),))] == 0  # one serves nothing
    assert merged[("sightline_drift_threshold", (("level", "warn"),))] == 0.1  # shared
    assert merged[("process_resident_memory_bytes", (("process", "0"),))] == 100
    assert merged[("process_resident_memory_bytes", (("process", "1"),))] == 120


def test_the_merge_exposes_as_prometheus_text_that_parses_back():
    registry = CollectorRegistry()
    texts = [("0", exposition(1, [0.5], 0, 1, 1.0)), ("1", exposition(2, [0.5], 1, 1, 2.0))]
    registry.register(MergedCollector(lambda: texts))
    again = values(text_string_to_metric_families(generate_latest(registry).decode()))
    assert again == values(merge(texts))
    assert again[("sightline_requests_total", (("model", "pets"),))] == 3


def test_a_process_whose_exposition_is_missing_is_simply_not_counted():
    only = values(merge([("1", exposition(4, [], 0, 1, 1.0))]))
    assert only[("sightline_requests_total", (("model", "pets"),))] == 4
    assert values(merge([])) == {}


def drift_exposition(classes, confidence, brightness, psi_value: float) -> str:
    """What one worker exports about one version's drift: its own figures and its window."""
    lines = ["# TYPE sightline_drift_psi gauge",
             f'sightline_drift_psi{{model="m",version="1",signal="class_mix"}} {psi_value}',
             "# TYPE sightline_drift_window_count gauge"]
    for signal, counts in (("class", classes), ("confidence", confidence),
                           ("brightness", brightness)):
        lines += [f'sightline_drift_window_count{{model="m",version="1",signal="{signal}",'
                  f'bin="{i}"}} {count}' for i, count in enumerate(counts)]
    return "\n".join(lines) + "\n"


def test_drift_is_computed_again_on_every_process_window_summed():
    reference = ReferenceStats([0.5, 0.5], Bins([0.0, 0.5, 1.0], [1, 1]),
                               Bins([0.0, 128.0, 255.0], [1, 1]))
    # each process sees one class only; together the mix is the reference's
    first = ([300, 0], [150, 150], [150, 150])
    second = ([0, 300], [150, 150], [150, 150])
    merged = with_drift_of_all(merge([("0", drift_exposition(*first, 9.0)),
                                      ("1", drift_exposition(*second, 9.0))]),
                               lambda model, version: reference, min_samples=100)
    expected = drift_statistics(reference, {"class": [300, 300], "confidence": [300, 300],
                                            "brightness": [300, 300]}, 100)
    found = values(merged)
    assert found[("sightline_drift_psi", (("model", "m"), ("signal", "class_mix"),
                                          ("version", "1")))] == expected["class_mix_psi"] < 0.01
    assert drift_statistics(reference, dict(zip(("class", "confidence", "brightness"), first,
                                                strict=True)), 100)["class_mix_psi"] > 1
    assert not any(name.startswith("sightline_drift_window_count") for name, _ in found)


def test_drift_without_a_reference_keeps_the_processes_largest():
    merged = with_drift_of_all(merge([("0", drift_exposition([1], [1], [1], 0.3)),
                                      ("1", drift_exposition([1], [1], [1], 0.1))]),
                               lambda model, version: None, min_samples=1)
    assert values(merged)[("sightline_drift_psi", (("model", "m"), ("signal", "class_mix"),
                                                   ("version", "1")))] == 0.3
