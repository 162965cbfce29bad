"""The build context (.dockerignore) and each image's builder stage, without a Docker engine:
the context holds every file the Dockerfiles copy and nothing private or large; and what the
builder stage copies is enough for pip to build the package, non-editable as in the image,
with every copied file inside the wheel (so the image runs no code from anywhere else)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.docker.build_context import context_files
from tests.docker.dockerfile import ROOT, SERVING, TRAINING, copy_sources, stages

KEPT_OUT = (".git/", ".venv", "artifacts/", "models/", "tests/", "docs/", "sightline.egg-info/")


@pytest.fixture(scope="module")
def context() -> set[str]:
    return context_files()


def copied_files(dockerfile: Path, context: set[str]) -> dict[str, str]:
    """{path in the builder's WORKDIR: path in the checkout} for each file its COPYs take."""
    builder = stages(dockerfile)[0]
    files = {}
    for sources, destination in copy_sources(builder):
        into_directory = destination.endswith("/") or len(sources) > 1
        for source in sources:
            taken = sorted(p for p in context if p == source or p.startswith(source + "/"))
            assert taken, f"{dockerfile.name}: COPY {source} takes nothing from the context"
            for path in taken:
                if path == source:  # a file: into the directory, or to the name given
                    target = Path(destination) / Path(path).name if into_directory \
                        else Path(destination)
                else:  # inside a copied directory: the directory's contents go there
                    target = Path(destination) / Path(path).relative_to(source)
                files[target.as_posix()] = path
    return files


def test_the_context_holds_the_package_sources_and_nothing_private_or_large(context):
    assert {"pyproject.toml", "README.md", "serving/__init__.py", "training/__init__.py",
            "training/configs/shapes.yaml"} <= context
    assert not [p for p in context if p.startswith(KEPT_OUT)]
    assert not [p for p in context if "__pycache__" in p or p.endswith((".pyc", ".pyo"))]


@pytest.mark.parametrize("dockerfile", [SERVING, TRAINING], ids=lambda p: p.name)
def test_every_file_a_builder_copies_is_in_the_context(dockerfile, context):
    for sources, _ in copy_sources(stages(dockerfile)[0]):
        for source in sources:
            on_disk = ROOT / source
            expected = {source} if on_disk.is_file() else {
                p.relative_to(ROOT).as_posix() for p in on_disk.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts}
            assert expected and expected <= context, sorted(expected - context)[:5]


@pytest.mark.parametrize(("dockerfile", "packages"), [(SERVING, {"serving"}),
                                                      (TRAINING, {"serving", "training"})],
                         ids=["serving", "training"])
def test_the_builder_copy_builds_a_wheel_that_holds_every_copied_source(
        dockerfile, packages, context, tmp_path):
    source = tmp_path / "src"
    for target, path in copied_files(dockerfile, context).items():
        (source / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, source / target)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sightline-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in inside}
    assert {t for t in top_level if not t.endswith(".dist-info")} == packages
    sources = {p.relative_to(source).as_posix() for p in source.rglob("*")
               if p.is_file() and p.parts[len(source.parts)] in packages}
    assert sources and sources <= inside, sorted(sources - inside)[:5]
