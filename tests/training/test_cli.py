"""The command line as a user meets it: bad input is one line on stderr and exit code 2."""

import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, encode


def run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def one_class(tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8)))
    return tmp_path


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--set", "data.name=folder", "--set", "data.path=/nonexistent"],
         "dataset path not found: /nonexistent"),
        (["--set", "data.name=imagenet"], "'data.name' must be one of"),
        (["--set", "model.name=vgg99"], "'model.name' must be one of"),
        (["--set", "epochs=-1"], "'epochs' must be > 0"),
        (["--set", "epochs=many"], "'epochs' must be int, got 'many'"),
        (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
        (["--config", "missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_bad_train_input(args, fragment):
    assert_user_error(run("train", *args), fragment)


def test_empty_dataset(tmp_path):
    assert_user_error(run("train", "--set", "data.name=folder", "--set", f"data.path={tmp_path}"),
                      "no images found")


def test_single_class_dataset(one_class):
    assert_user_error(run("train", "--set", "data.name=folder", "--set",
                          f"data.path={one_class}"), "at least 2 classes; found 1 (only)")


def test_corrupt_only_dataset(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"\xff\xd8 broken")
    assert_user_error(run("train", "--set", "data.name=folder", "--set", f"data.path={tmp_path}"),
                      "could be decoded")


@pytest.mark.parametrize("command", ["evaluate", "quantize", "report"])
def test_commands_on_a_missing_artifact(tmp_path, command):
    assert_user_error(run(command, str(tmp_path / "nope")), "artifact directory not found")


@pytest.mark.parametrize("command", ["evaluate", "quantize"])
def test_commands_on_a_directory_that_is_no_artifact(tmp_path, command):
    assert_user_error(run(command, str(tmp_path)), "is not a training artifact")


def test_quantize_rejects_an_unknown_mode(tmp_path):
    result = run("quantize", str(tmp_path), "--mode", "int4")
    assert result.returncode == 2 and "invalid choice: 'int4'" in result.stderr


def test_train_multiworker_single_process_from_the_command_line(tmp_path):
    """The multi-worker strategy with no TF_CONFIG is one worker: the same code on one CPU."""
    result = run("train", "--set", "strategy=multiworker", "--set", "epochs=1",
                 "--set", "data.num_images=300", "--set", "model.name=basic_cnn",
                 "--set", "tensorboard=false", "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"artifact written: {tmp_path / 'run'}" in result.stdout
    assert (tmp_path / "run" / "card.json").is_file()
