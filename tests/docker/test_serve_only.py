"""The serving image's dependency set, proven in .venv-serve: a venv holding only the serve
extra, pytest and pytest-timeout (built as the image's builder stage does, but editable). No
TensorFlow is importable there, and the server's integration tests pass in it: a real server on
loopback over a model repository, Classify with heatmaps, health, the Open Inference Protocol,
clean stops. The model comes from the main venv's fixtures (training needs TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import tomllib
import xml.etree.ElementTree as ElementTree
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.docker.dockerfile import ROOT
from tests.docker.prebuilt_artifact import ARTIFACT_VARIABLE, PREBUILT_KIND

SERVE_VENV = ROOT / ".venv-serve"
SERVE_PYTHON = SERVE_VENV / "bin" / "python"
INTEGRATION_MODULES = ["tests/serving/api/test_classifier.py", "tests/serving/api/test_oip.py",
                       "tests/serving/api/test_server.py"]
MUST_PASS = [  # (module, test name prefix): what the serving image has to do
    ("test_classifier", "test_heatmap_png_and_raw_map_for_every_method"),
    ("test_classifier", "test_classify_returns_top_k_with_labels_scores_and_timing"),
    ("test_oip", "test_oip_and_classify_agree"),
    ("test_server", "test_health_waits_for_a_model_and_turns_off_at_shutdown"),
]
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}
NOT_PASSED = {"failure", "error", "skipped"}  # junit tags

pytestmark = pytest.mark.skipif(not SERVE_PYTHON.exists(),
                                reason="no .venv-serve: `make test` builds it")


def serve_distributions() -> dict[str, metadata.Distribution]:
    (site_packages,) = SERVE_VENV.glob("lib/python3.*/site-packages")
    return {canonicalize_name(d.metadata["Name"]): d
            for d in metadata.distributions(path=[str(site_packages)])}


def closure(installed: dict[str, metadata.Distribution], roots: list[tuple[str, str]]) -> set:
    """Names of the distributions (name, extra) roots need, transitively, by their metadata."""
    needed, queue = set(), list(roots)
    while queue:
        name, extra = queue.pop()
        if name in needed and not extra:
            continue
        needed.add(name)
        for line in installed[name].requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                queue.append((canonicalize_name(requirement.name), ""))
    return needed


def test_the_serve_venv_holds_the_serve_extra_pytest_and_their_dependencies_only():
    installed = serve_distributions()
    needed = closure(installed, [("sightline", "serve"), ("pytest", ""), ("pytest-timeout", "")])
    assert set(installed) - INSTALLER_TOOLS == needed
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    train_and_dev_only = {canonicalize_name(Requirement(r).name)
                          for extra in ("train", "dev") for r in extras[extra]} - needed
    assert "tensorflow-cpu" in train_and_dev_only and not train_and_dev_only & set(installed)


def test_tensorflow_is_not_importable_and_the_server_loads_without_it():
    probe = ("import importlib.util, sys\n"
             "assert importlib.util.find_spec('tensorflow') is None, 'tensorflow importable'\n"
             "import serving.api.server, serving.client\n"
             "assert not [m for m in sys.modules if m.split('.')[0] in "
             "('tensorflow', 'keras', 'training')]\n")
    done = subprocess.run([str(SERVE_PYTHON), "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_server_integration_tests_pass_without_tensorflow(deployable, tmp_path):
    report = tmp_path / "junit.xml"
    done = subprocess.run(
        [str(SERVE_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.docker.prebuilt_artifact", "--confcutdir", "tests/serving",
         f"--junitxml={report}", *INTEGRATION_MODULES],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, ARTIFACT_VARIABLE: str(deployable(PREBUILT_KIND))})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {(case.get("classname").rsplit(".", 1)[-1], case.get("name")):
                [child.tag for child in case if child.tag in NOT_PASSED] for case in cases}
    assert len(outcomes) >= 25, sorted(outcomes)
    for module, prefix in MUST_PASS:
        ran = [outcome for (m, name), outcome in outcomes.items()
               if m == module and name.startswith(prefix)]
        assert ran and all(outcome == [] for outcome in ran), (module, prefix, ran)
