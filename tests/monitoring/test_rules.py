"""Monitoring as code: the Prometheus config, rules and rule tests, the Alertmanager config and
the runbooks (``monitoring/prometheus/``, ``monitoring/alertmanager/``, ``docs/runbooks/``).

The tools check what they can: ``promtool check config``, ``promtool check rules`` (lint
fatal, output exactly SUCCESS), ``promtool test rules`` on every test file, ``amtool
check-config`` and ``amtool config routes test``. They come from the Debian packages
``prometheus`` and ``prometheus-alertmanager``; without them on PATH those tests skip and say so.

The rest is contract the tools cannot see, checked from the YAML: every alert has a firing and a
quiet test case (every rule of it fires in some case), the labels, annotations and runbook every
alert must carry, every metric name is in ``monitoring/METRICS.md``, and every recording rule
is read by an alert or marked ``# for dashboards:``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring.grafana.contract import read_contract

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
ALERTS = PROMETHEUS / "rules" / "alerts.yml"
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/sightline/sightline/blob/main/docs/runbooks/"

SEVERITY_RECEIVER = {"page": "pager", "ticket": "ticket", "warning": "chat"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not on PATH (Debian: apt-get install --no-install-recommends prometheus)")
needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None,
    reason="amtool not on PATH (Debian: apt-get install prometheus-alertmanager)")


# -- helpers ------------------------------------------------------------------------------------

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def _rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def _alert_rules() -> list[dict]:
    return [rule for rule in _rules(ALERTS) if "alert" in rule]


def _kebab(name: str) -> str:
    """SightlineTargetDown -> sightline-target-down"""
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _rule_id(rule: dict) -> str:
    window = rule.get("labels", {}).get("long_window")
    return f"{rule['alert']}[{window}]" if window else rule["alert"]


def _alert_cases() -> tuple[dict[str, list[dict]], set[str]]:
    """From every promtool test file: ({alertname: [exp_labels of each expected alert]},
    {alertnames with a case that expects no alert})."""
    firing: dict[str, list[dict]] = {}
    quiet: set[str] = set()
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if expected:
                    firing.setdefault(case["alertname"], []).extend(
                        alert.get("exp_labels", {}) for alert in expected)
                else:
                    quiet.add(case["alertname"])
    return firing, quiet


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not names
    return set(re.findall(r"(?<![\w:])(sightline_\w+|grpc_server_\w+|process_\w+|up)(?![\w:])",
                          expr))


# -- Prometheus ---------------------------------------------------------------------------------

@needs_promtool
def test_prometheus_config_is_valid():
    result = _run("promtool", "check", "config", "--lint=all", "--lint-fatal", str(CONFIG))
    assert result.returncode == 0, _output(result)
    noise = [line for line in result.stdout.splitlines()
             if line.strip() and not line.startswith("Checking ") and "SUCCESS" not in line]
    assert not noise and not result.stderr.strip(), _output(result)


def test_prometheus_config_scrapes_sightline_and_loads_every_rule_file():
    config = yaml.safe_load(CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "sightline"]
    assert job["static_configs"] == [{"targets": ["localhost:8502"]}]
    assert job["scrape_interval"] == "15s"
    loaded = sorted((CONFIG.parent / path).resolve() for path in config["rule_files"])
    assert loaded == RULE_FILES, f"rule_files {config['rule_files']} != {RULE_FILES}"
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["localhost:9093"]}]


@needs_promtool
@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rule_file_is_clean(path):
    result = _run("promtool", "check", "rules", "--lint=all", "--lint-fatal", str(path))
    assert result.returncode == 0, _output(result)
    expected = f"Checking {path}\n  SUCCESS: {len(_rules(path))} rules found\n\n"
    assert result.stdout == expected and not result.stderr, _output(result)


@needs_promtool
@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(path):
    result = _run("promtool", "test", "rules", str(path))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, _output(result)


def test_every_alert_has_a_firing_and_a_quiet_case():
    firing, quiet = _alert_cases()
    missing = []
    for rule in _alert_rules():
        name, labels = rule["alert"], rule.get("labels", {})
        # every rule of an alert (burn-rate alerts have three) fires in some case
        if not any(labels.items() <= expected.items() for expected in firing.get(name, [])):
            missing.append(f"{_rule_id(rule)}: no case where it fires with labels {labels}")
        if name not in quiet:
            missing.append(f"{name}: no case where it stays quiet")
    assert not missing, "\n".join(sorted(set(missing)))


@pytest.mark.parametrize("rule", _alert_rules(), ids=_rule_id)
def test_alert_carries_severity_annotations_and_runbook(rule):
    name = rule["alert"]
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    severity = labels.get("severity")
    assert severity in SEVERITY_RECEIVER, f"{name}: severity {severity!r}, not page|ticket|warning"
    missing = [key for key in REQUIRED_ANNOTATIONS if not annotations.get(key, "").strip()]
    assert not missing, f"{name}: missing annotations {missing}"
    assert "{{" in annotations["description"], f"{name}: description shows no value or label"
    runbook = f"{_kebab(name)}.md"
    assert annotations["runbook_url"] == RUNBOOK_BASE + runbook, annotations["runbook_url"]
    assert (RUNBOOKS / runbook).is_file(), f"{name}: no runbook docs/runbooks/{runbook}"


def test_every_metric_a_rule_reads_is_in_the_contract():
    contract = read_contract()  # the dashboards' reader of METRICS.md, `up` included
    unknown = set()
    for path in RULE_FILES:
        for rule in _rules(path):
            for name in _metric_names(rule["expr"]):
                if contract.base(name) is None:
                    reader = rule.get("record") or rule.get("alert")
                    unknown.add(f"{path.name}: {reader} reads {name}")
    assert not unknown, "not in monitoring/METRICS.md:\n" + "\n".join(sorted(unknown))


def test_every_recording_rule_is_read_by_an_alert_or_a_dashboard():
    alert_exprs = " ".join(rule["expr"] for rule in _alert_rules())
    recorded = set()
    unread = []
    for path in RULE_FILES:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            match = re.match(r"\s*- record:\s*(\S+)", line)
            if not match:
                continue
            name = match.group(1)
            recorded.add(name)
            comments = []
            for above in reversed(lines[:i]):
                if not above.strip().startswith("#"):
                    break
                comments.append(above)
            read_by_alert = re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", alert_exprs)
            if not read_by_alert and not any("for dashboards" in c for c in comments):
                unread.append(f"{path.name}: {name}")
    assert not unread, "read by no alert and not marked '# for dashboards:':\n" + "\n".join(unread)
    dangling = set(re.findall(r"sightline:[\w:]+", alert_exprs)) - recorded
    assert not dangling, f"alerts read recording rules that do not exist: {sorted(dangling)}"


# -- Alertmanager -------------------------------------------------------------------------------

@needs_amtool
def test_alertmanager_config_is_valid():
    result = _run("amtool", "check-config", str(ALERTMANAGER))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, _output(result)


ROUTES = [
    *sorted({(f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}",
              SEVERITY_RECEIVER[rule["labels"]["severity"]]) for rule in _alert_rules()
             if rule.get("labels", {}).get("severity") in SEVERITY_RECEIVER}),
    ("alertname=SomethingNew", "severity=page", "pager"),
    ("alertname=SomethingNew", "severity=ticket", "ticket"),
    ("alertname=SomethingNew", "severity=warning", "chat"),
    ("alertname=SomethingNew", "severity=critical", "chat"),  # unknown severity: the fallback
    ("alertname=SomethingNew", "model=shapes", "chat"),  # no severity: the fallback
]


@needs_amtool
@pytest.mark.parametrize("alertname, label, receiver", ROUTES,
                         ids=[f"{a.split('=')[1]}-{b}" for a, b, _ in ROUTES])
def test_alert_routes_to_its_receiver(alertname, label, receiver):
    result = _run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                  f"--verify.receivers={receiver}", alertname, label)
    assert result.returncode == 0 and result.stdout.strip() == receiver, _output(result)
