"""The manifests under k8s/ as built: every kustomization.yaml found there, built once with the
real ``kubectl kustomize``, so a directory added later (k8s/training/) is built and checked too."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
KUSTOMIZATIONS = sorted(str(path.parent.relative_to(K8S))
                        for path in K8S.rglob("kustomization.yaml"))
KUBECTL = shutil.which("kubectl")
TOOLS = ROOT / ".venv-k8s" / "bin"  # kubernetes-validate, checkov and the CRD models (make tools)

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (v1.32, with kustomize v5.5) not on PATH")
needs_tools = pytest.mark.skipif(
    not (TOOLS / "kubernetes-validate").exists() or not (TOOLS / "checkov").exists(),
    reason="kubernetes-validate and checkov live in .venv-k8s: run `make tools`")


@dataclass
class Build:
    directory: str  # relative to k8s/
    returncode: int
    text: str
    stderr: str
    objects: list[dict] = field(default_factory=list)

    def require(self) -> list[dict]:
        if self.returncode != 0:
            pytest.fail(f"kubectl kustomize k8s/{self.directory} failed:\n{self.stderr}")
        return self.objects

    def find(self, kind: str, name: str | None = None) -> list[dict]:
        return [obj for obj in self.require() if obj["kind"] == kind
                and (name is None or obj["metadata"]["name"] == name)]

    def one(self, kind: str, name: str) -> dict:
        found = self.find(kind, name)
        assert len(found) == 1, f"k8s/{self.directory}: {len(found)} {kind}/{name}, want 1"
        return found[0]


def build(directory: str) -> Build:
    result = subprocess.run([KUBECTL, "kustomize", str(K8S / directory)], capture_output=True,
                            text=True, timeout=120)
    built = Build(directory, result.returncode, result.stdout, result.stderr)
    if result.returncode == 0:
        built.objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    return built


@pytest.fixture(scope="session")
def builds() -> dict[str, Build]:
    if KUBECTL is None:
        pytest.skip("kubectl (v1.32, with kustomize v5.5) not on PATH")
    return {directory: build(directory) for directory in KUSTOMIZATIONS}


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a workload (Pod, Deployment, Job, ...), or None."""
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    template = obj.get("spec", {}).get("template")
    return template["spec"] if isinstance(template, dict) and "spec" in template else None


def container(spec: dict, name: str) -> dict:
    found = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]
