"""A pytest plugin that runs the server's integration tests on an artifact built elsewhere, in
an environment without TensorFlow (.venv-serve: the serving image's dependencies).

The serving tests take their model from tests/conftest.py's ``deployable`` fixture, which
trains and quantizes with TensorFlow. tests/docker/test_serve_only.py builds that artifact in
the main venv, then runs pytest in .venv-serve with ``-p tests.docker.prebuilt_artifact
--confcutdir tests/serving``: tests/conftest.py's fixtures are left out, and this plugin's
``deployable`` returns the artifact named by $SERVE_ONLY_ARTIFACT instead.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ARTIFACT_VARIABLE = "SERVE_ONLY_ARTIFACT"
PREBUILT_KIND = "gap"
TRAINING_ONLY = ("tensorflow", "keras", "tensorboard", "matplotlib")


def pytest_configure(config):
    importable = [name for name in TRAINING_ONLY if importlib.util.find_spec(name) is not None]
    if importable:
        raise pytest.UsageError(f"not a serve-only environment: {importable} importable")
    artifact = Path(os.environ.get(ARTIFACT_VARIABLE, ""))
    if not (artifact / "card.json").is_file():
        raise pytest.UsageError(f"${ARTIFACT_VARIABLE} must name a deployable artifact; "
                                f"got {str(artifact)!r}")


@pytest.fixture(scope="session")
def deployable():
    """deployable("gap") -> the prebuilt int8 artifact (read-only by convention, as upstream)."""
    artifact = Path(os.environ[ARTIFACT_VARIABLE])

    def get(kind: str) -> Path:
        if kind != PREBUILT_KIND:
            raise LookupError(f"only the {PREBUILT_KIND!r} artifact is prebuilt; asked {kind!r}")
        return artifact

    return get
