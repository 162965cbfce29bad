"""The Grafana dashboards: lint rules (after grafana/dashboard-linter, plus our metrics
contract), every expression parsed by promtool, and the preview run against a real Prometheus
scraping a fake exporter of every contract metric."""

import copy
import json
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from monitoring.grafana import contract, lint, panels, preview, promql
from tests.monitoring.conftest import free_port

DASHBOARDS = panels.load_dashboards()
CONTRACT = contract.read_contract()
PROMTOOL = shutil.which("promtool")
SAMPLE_VARIABLES = {"model": "shapes", "instance": "127.0.0.1:8502", "__rate_interval": "1m"}


# -- lint ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", sorted(lint.RULES))
@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_passes_rule(name, rule):
    assert lint.RULES[rule](DASHBOARDS[name], CONTRACT) == []


def _panel(d, title):
    return next(p for p in panels.iter_panels(d) if p.get("title") == title)


def _edit_exprs(old, new):
    def edit(d):
        for p in panels.iter_panels(d):
            for t in p.get("targets", []):
                t["expr"] = t["expr"].replace(old, new)
    return edit


def _set(path, value, title="Requests per second"):
    def edit(d):
        node = _panel(d, title)
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _variable(name, key, value):
    def edit(d):
        next(v for v in d["templating"]["list"] if v["name"] == name)[key] = value
    return edit


BREAKAGES = {  # rule -> an edit of service-overview that the rule must catch
    "template-datasource-rule": _variable("datasource", "query", "loki"),
    "template-instance-rule": _variable("instance", "allValue", None),
    "sightline-template-model-rule": _variable("model", "multi", False),
    "template-label-promql-rule": _variable("model", "query",
                                            "label_values(sightline_model_info, modle)"),
    "template-on-time-change-reload-rule": _variable("instance", "refresh", 1),
    "panel-datasource-rule": _set(["datasource"], {"type": "prometheus", "uid": "prom-1"}),
    "panel-title-description-rule": _set(["description"], " "),
    "panel-units-rule": _set(["fieldConfig", "defaults", "unit"], "requests"),
    "panel-no-targets-rule": _set(["targets"], []),
    "target-rate-interval-rule": _edit_exprs("[$__rate_interval]", "[1m]"),
    "target-counter-agg-rule": _edit_exprs("rate(sightline_requests_rejected_total",
                                           "sum(sightline_requests_rejected_total"),
    "target-job-rule": _edit_exprs('job=~"$job", ', ""),
    "target-instance-rule": _edit_exprs('instance=~"$instance", grpc_service',
                                        "grpc_service"),
    "sightline-target-model-rule": _edit_exprs(', model=~"$model"}', "}"),
    "sightline-contract-rule": _edit_exprs("grpc_code!=", "grpc_status!="),
    "sightline-layout-rule": _set(["gridPos", "x"], 2),
}


def test_every_rule_has_a_breakage():
    assert sorted(BREAKAGES) == sorted(lint.RULES)


@pytest.mark.parametrize("rule", sorted(BREAKAGES))
def test_rule_catches_its_breakage(rule):
    broken = copy.deepcopy(DASHBOARDS["service-overview"])
    BREAKAGES[rule](broken)
    assert lint.RULES[rule](broken, CONTRACT), f"{rule} missed the breakage"


def test_contract_rule_catches_an_unknown_metric():
    broken = copy.deepcopy(DASHBOARDS["model-quality"])
    _edit_exprs("sightline_drift_ks", "sightline_drift_kl")(broken)
    problems = lint.RULES["sightline-contract-rule"](broken, CONTRACT)
    assert problems and all("sightline_drift_kl is not in METRICS.md" in p for p in problems)


def test_layout_rule_catches_duplicate_ids():
    broken = copy.deepcopy(DASHBOARDS["model-quality"])
    broken["panels"][2]["id"] = broken["panels"][1]["id"]
    assert any("used 2 times" in p for p in lint.RULES["sightline-layout-rule"](broken, CONTRACT))


def test_contract_reads_metrics_md():
    labels = CONTRACT.labels
    assert labels["sightline_request_duration_seconds"] == {"model", "version", "stage"}
    assert labels["grpc_server_msg_sent_total"] == labels["grpc_server_msg_received_total"]
    assert labels["sightline_in_flight_requests"] == frozenset()
    assert "grpc_server_handling_seconds_bucket" not in labels  # an example, not a metric
    assert CONTRACT.base("sightline_batch_size_bucket") == "sightline_batch_size"
    assert CONTRACT.base("python_gc_objects_collected_total")  # python_gc_*
    assert CONTRACT.base("sightline_nope_total") is None
    assert len(labels) >= 30


def test_selectors_read_matchers_ranges_and_functions():
    found = promql.selectors(
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x=~"$x", y!="z"}[$__rate_interval])))'
        ' / ignoring (y) group_left sum(b_total) or vector(0)')
    assert [(s.name, s.range, s.function) for s in found] == [
        ("a_bucket", "$__rate_interval", "rate"), ("b_total", None, "sum")]
    assert found[0].matchers == {"x": ("=~", "$x"), "y": ("!=", "z")}
    with pytest.raises(ValueError, match="unbalanced"):
        promql.selectors("sum(rate(a_total[1m])")


def test_substitute_every_spelling_and_refuse_unknown():
    variables = {"model": "shapes", "__rate_interval": "4s"}
    assert panels.substitute('a{m=~"$model", n=~"${model}", o="[[model]]"}[$__rate_interval]',
                             variables) == 'a{m=~"shapes", n=~"shapes", o="shapes"}[4s]'
    with pytest.raises(KeyError, match="instance"):
        panels.substitute('a{i=~"$instance"}', variables)


def test_default_variables_are_all_and_rate_interval():
    variables = panels.default_variables(DASHBOARDS["service-overview"], step_s=30,
                                         scrape_interval_s=15)
    assert variables["instance"] == variables["model"] == ".+"
    assert variables["job"] == "sightline"
    assert variables["__rate_interval"] == "60s"  # max(30 + 15, 4 x 15)
    assert "datasource" not in variables


def test_dashboards_have_distinct_uids_and_link_each_other():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) == 2
    for d in DASHBOARDS.values():
        assert d["title"].startswith("Sightline / ") and "sightline" in d["tags"]
        assert d["links"][0]["tags"] == ["sightline"]


def test_provisioning_points_at_the_dashboards_and_prometheus():
    root = panels.DASHBOARD_DIR.parent / "provisioning"
    (source,) = yaml.safe_load((root / "datasources" / "prometheus.yml").read_text())[
        "datasources"]
    assert (source["type"], source["uid"], source["url"]) == (
        "prometheus", "sightline-prometheus", "${PROMETHEUS_URL}")
    (provider,) = yaml.safe_load((root / "dashboards" / "sightline.yml").read_text())["providers"]
    assert provider["folder"] == "Sightline" and provider["type"] == "file"
    assert provider["options"]["path"].endswith("/dashboards/sightline")


def test_no_text_panel_stands_in_for_missing_data():
    texts = [p["title"] for d in DASHBOARDS.values() for p in panels.iter_panels(d)
             if p["type"] == "text"]
    assert texts == []


# -- promtool --------------------------------------------------------------------------------

def _all_expressions():
    """(record name, expression) for every target, with sample and default variables, and for
    every variable query's selector."""
    rules = []
    for name, d in DASHBOARDS.items():
        stem = name.replace("-", "_")
        for label, variables in (("sample", SAMPLE_VARIABLES), ("default", {})):
            for q in panels.panel_expressions(d, variables):
                rules.append((f"{stem}:{label}:panel_{q.panel_id}_{q.ref_id}", q.expr))
        defaults = panels.default_variables(d)
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                _, selector, _ = promql.variable_selectors(v["query"])
                rules.append((f"{stem}:variable_{v['name']}",
                              panels.substitute(selector, defaults)))
    return rules


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")
def test_promtool_parses_every_expression(tmp_path):
    rules = _all_expressions()
    assert len(rules) > 100
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [
        {"name": "dashboard-expressions", "rules": [{"record": r, "expr": e} for r, e in rules]}
    ]}, sort_keys=False))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    numbered = "\n".join(f"rule {i}: {r}: {e}" for i, (r, e) in enumerate(rules))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{numbered}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# -- the preview against a real Prometheus ---------------------------------------------------

def _fake_exporter(stop: threading.Event):
    """A prometheus_client HTTP exporter of every contract metric, updated every 0.1 s."""
    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        gc_collector,
        platform_collector,
        process_collector,
        start_http_server,
    )

    r = CollectorRegistry()
    process_collector.ProcessCollector(registry=r)
    platform_collector.PlatformCollector(registry=r)
    gc_collector.GCCollector(registry=r)
    grpc = ["grpc_type", "grpc_service", "grpc_method"]
    per_version = ["model", "version"]
    m = {
        "started": Counter("grpc_server_started_total", "", grpc, registry=r),
        "handled": Counter("grpc_server_handled_total", "", grpc + ["grpc_code"], registry=r),
        "handling": Histogram("grpc_server_handling_seconds", "", grpc, registry=r,
                              buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 10)),
        "received": Counter("grpc_server_msg_received_total", "", grpc, registry=r),
        "sent": Counter("grpc_server_msg_sent_total", "", grpc, registry=r),
        "stage": Histogram("sightline_request_duration_seconds", "", ["model", "version", "stage"],
                           registry=r, buckets=(0.0005, 0.005, 0.05, 0.1, 0.5, 5)),
        "batch": Histogram("sightline_batch_size", "", per_version, registry=r,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128)),
        "depth": Gauge("sightline_queue_depth", "", per_version, registry=r),
        "capacity": Gauge("sightline_queue_capacity", "", per_version, registry=r),
        "in_flight": Gauge("sightline_in_flight_requests", "", registry=r),
        "rejected": Counter("sightline_requests_rejected_total", "", ["reason"], registry=r),
        "loads": Counter("sightline_model_loads_total", "", ["model", "result"], registry=r),
        "unloads": Counter("sightline_model_unloads_total", "", ["model"], registry=r),
        "late": Counter("sightline_late_results_total", "", per_version, registry=r),
        "load_seconds": Histogram("sightline_model_load_duration_seconds", "", ["model"],
                                  registry=r),
        "warmup": Gauge("sightline_model_warmup_seconds", "", ["model"], registry=r),
        "info": Gauge("sightline_model_info", "", ["model", "version", "sha256", "variant"],
                      registry=r),
        "loaded": Gauge("sightline_model_loaded", "", ["model"], registry=r),
        "predictions": Counter("sightline_predictions_total", "", [*per_version, "class"],
                               registry=r),
        "confidence": Histogram("sightline_prediction_confidence", "", per_version, registry=r,
                                buckets=[round(0.1 * i, 1) for i in range(1, 11)]),
        "low": Counter("sightline_low_confidence_predictions_total", "", per_version,
                       registry=r),
        "bytes": Histogram("sightline_input_bytes", "", per_version, registry=r,
                           buckets=tuple(1024 * 4**i for i in range(8))),
        "pixels": Histogram("sightline_input_pixels", "", per_version, registry=r,
                            buckets=(1e3, 4e3, 1.6e4, 6.4e4, 2.5e5, 1e6, 4e6, 1.6e7, 4e7)),
        "decode": Counter("sightline_decode_failures_total", "", ["reason"], registry=r),
        "psi": Gauge("sightline_drift_psi", "", [*per_version, "signal"], registry=r),
        "ks": Gauge("sightline_drift_ks", "", [*per_version, "signal"], registry=r),
        "window": Gauge("sightline_drift_window_size", "", per_version, registry=r),
        "threshold": Gauge("sightline_drift_threshold", "", ["level"], registry=r),
        **{name: Counter(f"sightline_ab_{name}_total", "", ["experiment", "variant"], registry=r)
           for name in ("requests", "errors", "feedback", "correct")},
        "ab_latency": Histogram("sightline_ab_latency_seconds", "", ["experiment", "variant"],
                                registry=r),
        "ab_share": Gauge("sightline_ab_candidate_share", "", ["experiment"], registry=r),
        "ab_state": Gauge("sightline_ab_state", "", ["experiment", "state"], registry=r),
        "ab_p": Gauge("sightline_ab_sequential_p_value", "", ["experiment"], registry=r),
        "ab_decisions": Counter("sightline_ab_decisions_total", "", ["experiment", "state"],
                                registry=r),
        **{f"shadow_{name}": Counter(f"sightline_ab_shadow_{name}_total", "", ["experiment"],
                                     registry=r)
           for name in ("mirrored", "dropped", "agreed", "explained")},
        **{f"shadow_{name}": Gauge(f"sightline_ab_shadow_{name}", "", ["experiment"], registry=r)
           for name in ("map_correlation", "top_region_overlap")},
    }
    m["shadow_map_correlation"].labels("shapes-next").set(0.93)
    m["shadow_top_region_overlap"].labels("shapes-next").set(0.71)
    m["ab_share"].labels("shapes-next").set(0.25)
    m["ab_p"].labels("shapes-next").set(0.4)
    for state in ("running", "promotable", "rolled_back", "halted_srm"):
        m["ab_state"].labels("shapes-next", state).set(state == "running")
        m["ab_decisions"].labels("shapes-next", state)
    models = {"shapes": ["circle", "square", "triangle"], "cifar10": ["cat", "dog", "ship"]}
    for model in models:
        m["info"].labels(model, "3", "ab12" * 16, "int8").set(1)
        m["loaded"].labels(model).set(1)
        m["late"].labels(model, "3")
        m["capacity"].labels(model, "3").set(64)
        m["warmup"].labels(model).set(0.4)
        m["load_seconds"].labels(model).observe(1.2)
        for signal, value in (("class_mix", 0.05), ("brightness", 0.15)):
            m["psi"].labels(model, "3", signal).set(value)
        m["ks"].labels(model, "3", "confidence").set(0.25)
        m["window"].labels(model, "3").set(500)
        m["threshold"].labels("alert").set(0.2)
    rng = random.Random(0)

    def tick():
        classify = ("unary", "sightline.classifier.v1.ImageClassifier", "Classify")
        health = ("unary", "grpc.health.v1.Health", "Check")
        for labels, codes in ((classify, ["OK"] * 8 + ["INVALID_ARGUMENT", "UNAVAILABLE"]),
                              (health, ["OK"])):
            m["started"].labels(*labels).inc()
            m["received"].labels(*labels).inc()
            m["sent"].labels(*labels).inc()
            m["handled"].labels(*labels, rng.choice(codes)).inc()
            m["handling"].labels(*labels).observe(rng.expovariate(1 / 0.03))
        for model, classes in models.items():
            for stage in ("decode", "queue", "inference", "explain", "total"):
                m["stage"].labels(model, "3", stage).observe(rng.expovariate(1 / 0.01))
            m["batch"].labels(model, "3").observe(rng.choice((1, 2, 4, 8)))
            m["depth"].labels(model, "3").set(rng.randint(0, 10))
            confidence = rng.uniform(0.3, 1.0)
            m["predictions"].labels(model, "3", rng.choice(classes)).inc()
            m["confidence"].labels(model, "3").observe(confidence)
            m["low"].labels(model, "3").inc(confidence < 0.5)
            m["bytes"].labels(model, "3").observe(rng.uniform(2e3, 2e5))
            m["pixels"].labels(model, "3").observe(rng.uniform(1e3, 1e6))
            m["loads"].labels(model, rng.choice(("success", "failure"))).inc(rng.random() < 0.1)
            m["unloads"].labels(model).inc(rng.random() < 0.05)
        for name, amount in (("mirrored", 4), ("dropped", 0), ("agreed", 3), ("explained", 1)):
            m[f"shadow_{name}"].labels("shapes-next").inc(amount)
        for variant in ("baseline", "candidate"):
            m["requests"].labels("shapes-next", variant).inc(4)
            m["errors"].labels("shapes-next", variant).inc(rng.random() < 0.05)
            m["feedback"].labels("shapes-next", variant).inc(2)
            m["correct"].labels("shapes-next", variant).inc(rng.choice((1, 2)))
        m["in_flight"].set(rng.randint(0, 5))
        m["rejected"].labels(rng.choice(("queue_full", "deadline"))).inc()
        m["decode"].labels(rng.choice(("corrupt", "too_large"))).inc()

    def loop():
        while not stop.wait(0.1):
            tick()

    tick()  # every labelled series exists before the first scrape
    for model in models:
        m["loads"].labels(model, "failure").inc(0)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=r)
    threading.Thread(target=loop, daemon=True).start()
    return server, {f.name for f in r.collect()}


@pytest.fixture(scope="module")
def fake_exporter():
    """(port, exported family names) of the fake exporter, for the tests of this module."""
    stop = threading.Event()
    server, families = _fake_exporter(stop)
    yield server.server_port, families
    stop.set()
    server.shutdown()


def test_fake_exporter_covers_the_contract(fake_exporter):
    _, families = fake_exporter
    missing = [name for name in CONTRACT.labels if name != "up"
               and name not in families and name.removesuffix("_total") not in families]
    assert missing == []


def test_preview_draws_every_panel_with_data(start_prometheus, fake_exporter, tmp_path,
                                             capsys):
    prometheus = start_prometheus([f"127.0.0.1:{fake_exporter[0]}"])
    # 4 scrapes: two samples in every 4 s $__rate_interval window of the last points
    prometheus.wait_for('count_over_time(up{job="sightline"}[1m]) >= 4')
    status = preview.main(["--prometheus", prometheus.url, "--out", str(tmp_path / "png"),
                           "--minutes", "0.25", "--scrape-interval", "1", "--json",
                           "--strict"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0, report
    assert sorted(report["dashboards"]) == sorted(DASHBOARDS)
    for name, result in report["dashboards"].items():
        assert result["errors"] == [] and result["no_data"] == [], (name, result)
        assert result["empty_panels"] == []
        png = Path(result["png"])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000


def test_preview_reports_a_bad_query_and_missing_data(start_prometheus, fake_exporter):
    prometheus = start_prometheus([f"127.0.0.1:{fake_exporter[0]}"])
    now = time.time()
    with pytest.raises(preview.QueryError, match="HTTP 400"):
        preview.query_range(prometheus.url, "sum(rate(x[1m])", now - 10, now, 1)
    assert preview.query_range(prometheus.url, 'up{job="nobody"}', now - 10, now, 1) == []


def test_preview_refuses_an_unreachable_prometheus(tmp_path):
    with pytest.raises(preview.QueryError, match="not reachable"):
        preview.preview(f"http://127.0.0.1:{free_port()}", tmp_path, timeout=1)
