"""The manifests under k8s/, checked offline by real tools (no cluster):

- ``kubectl kustomize`` builds every kustomization under k8s/;
- ``kubernetes-validate --strict`` accepts every built object of a built-in kind for each
  Kubernetes version the fleet supports (unknown fields are errors);
- the custom resources match their published schemas (tests/k8s/custom_resources.py);
- ``checkov --framework kubernetes`` fails no check but the skips that k8s/README.md lists
  and justifies, and each listed skip still applies;
- the generated PrometheusRules and dashboard ConfigMaps equal what k8s/generate.py makes from
  monitoring/ now.

kubernetes-validate and checkov come from .venv-k8s (`make tools`); without it those tests skip
and say so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import KUSTOMIZATIONS, ROOT, TOOLS, needs_kubectl, needs_tools

KUBERNETES_VERSIONS = ("1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0")
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}
README = ROOT / "k8s" / "README.md"


def _write(builds, tmp_path: Path, keep) -> list[Path]:
    """One file per kustomization with the objects ``keep`` accepts; -> the non-empty files."""
    files = []
    for directory, built in builds.items():
        objects = [obj for obj in built.require() if keep(obj)]
        if objects:
            path = tmp_path / (directory.replace("/", "__") + ".yaml")
            path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
            files.append(path)
    return files


@needs_kubectl
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_every_kustomization_builds(builds, directory):
    objects = builds[directory].require()
    assert objects, f"k8s/{directory} builds to nothing"


@needs_kubectl
@needs_tools
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_builtin_kinds_validate_strictly(builds, tmp_path, version):
    files = _write(builds, tmp_path, lambda obj: obj["kind"] not in CUSTOM_KINDS)
    result = subprocess.run([TOOLS / "kubernetes-validate", "--strict", "--quiet",
                             "--kubernetes-version", version, *map(str, files)],
                            capture_output=True, text=True, timeout=300)
    # --quiet leaves errors, and warnings such as a kind it has no schema for: both fail here.
    report = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not report, f"Kubernetes {version}:\n{report}"


@needs_kubectl
@needs_tools
def test_custom_resources_match_their_schemas(builds, tmp_path):
    files = _write(builds, tmp_path, lambda obj: obj["kind"] in CUSTOM_KINDS)
    result = subprocess.run([TOOLS / "python", ROOT / "tests" / "k8s" / "custom_resources.py",
                             "--kubernetes", KUBERNETES_VERSIONS[-1], *map(str, files)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert not report["errors"], "\n".join(report["errors"])
    kinds = {name.split("/")[0] for name in report["checked"]}
    assert kinds == CUSTOM_KINDS, f"checked {sorted(kinds)}"


# -- checkov ------------------------------------------------------------------------------------

def listed_skips(text: str) -> dict[str, set[str]]:
    """k8s/README.md's "checkov skips" table: check id -> the `Kind/name` objects it names."""
    section = re.search(r"^## checkov skips\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "k8s/README.md has no '## checkov skips' section"
    skips: dict[str, set[str]] = {}
    for row in re.findall(r"^\|\s*(CKV2?_K8S_\d+)\b[^|]*\|([^|]*)\|([^|]*)\|", section[1], re.M):
        check, objects, why = row
        assert why.strip(), f"{check}: a skip needs its reason"
        skips.setdefault(check, set()).update(re.findall(r"`([A-Za-z]+/[a-z0-9.-]+)`", objects))
    return skips


@pytest.fixture(scope="module")
def checkov_failures(builds, tmp_path_factory) -> set[tuple[str, str]]:
    """(check id, "Kind/name") for every check checkov fails on any built kustomization."""
    folder = tmp_path_factory.mktemp("checkov")
    _write(builds, folder, lambda obj: True)
    result = subprocess.run(
        [TOOLS / "checkov", "--framework", "kubernetes", "--directory", str(folder),
         "--skip-download", "--output", "json", "--compact", "--quiet"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})  # offline: no guideline download
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    failures = set()
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        for check in report["results"]["failed_checks"]:
            parts = check["resource"].split(".")  # Kind.namespace.name, or Kind.name
            failures.add((check["check_id"], f"{parts[0]}/{parts[-1]}"))
    return failures


@needs_kubectl
@needs_tools
def test_checkov_fails_nothing_unlisted(checkov_failures):
    skips = listed_skips(README.read_text())
    unlisted = sorted(f"{check} {obj}" for check, obj in checkov_failures
                      if obj not in skips.get(check, set()))
    assert not unlisted, ("checkov failed checks that k8s/README.md does not list:\n"
                          + "\n".join(unlisted))


@needs_kubectl
@needs_tools
def test_every_listed_skip_still_applies(checkov_failures):
    skips = listed_skips(README.read_text())
    stale = sorted(f"{check} {obj}" for check, objects in skips.items() for obj in objects
                   if (check, obj) not in checkov_failures)
    assert not stale, "k8s/README.md lists skips that checkov no longer fails:\n" + "\n".join(stale)


def test_the_skip_table_parses():
    skips = listed_skips(README.read_text())
    assert skips and all(skips.values()), "every listed skip names the objects it covers"


# -- generated files ----------------------------------------------------------------------------

def _generator():
    spec = importlib.util.spec_from_file_location("k8s_generate", ROOT / "k8s" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_match_their_sources():
    for path, text in _generator().render().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} differs from monitoring/: run `python k8s/generate.py`")


def test_the_prometheus_rules_carry_every_source_group():
    rules = yaml.safe_load_all((ROOT / "k8s/base/monitoring/prometheusrule.yaml").read_text())
    groups = [group for rule in rules for group in rule["spec"]["groups"]]
    sources = [group for path in sorted((ROOT / "monitoring/prometheus/rules").glob("*.yml"))
               for group in yaml.safe_load(path.read_text())["groups"]]
    assert groups == sources
