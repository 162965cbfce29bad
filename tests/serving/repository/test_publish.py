import json
import os

import pytest

from serving.card import load_card
from serving.repository import publish as deploy_module
from serving.repository.loader import load_servable
from serving.repository.publish import DeployError, deploy, main, newest_deployable
from tests.serving.conftest import broken_copy

from .fakes import FakeModel, model_bytes, write_artifact


@pytest.fixture(autouse=True)
def fake_interpreter(monkeypatch):
    """The fake artifacts' models are not TFLite: deploy proves them with the fake model.
    test_a_model_that_would_not_load_is_never_published proves a real one."""
    monkeypatch.setattr(deploy_module, "TFLiteModel", FakeModel)


@pytest.fixture
def artifacts(tmp_path):
    """artifacts/ with an older deployable run, a newer one, and `latest` -> a failed one."""
    root = tmp_path / "artifacts"
    write_artifact(root / "pets-old", name="pets", created_at="2026-11-27T10:00:00+00:00")
    write_artifact(root / "pets-new", name="pets", created_at="2026-11-28T10:00:00+00:00")
    write_artifact(root / "pets-failed", name="pets", deployable=False,
                   created_at="2026-11-29T10:00:00+00:00")
    (root / "latest").symlink_to("pets-failed")
    (root / "notes").mkdir()  # not an artifact: skipped
    return root


def test_newest_deployable_prefers_latest_then_the_newest_card(artifacts):
    assert newest_deployable(artifacts) == artifacts / "pets-new"
    (artifacts / "latest").unlink()
    (artifacts / "latest").symlink_to("pets-old")
    assert newest_deployable(artifacts) == (artifacts / "pets-old").resolve()


def test_deploy_publishes_numbered_versions_the_loader_accepts(artifacts, tmp_path, capsys):
    models = tmp_path / "models"
    assert main([str(artifacts / "pets-old"), "--models", str(models)]) == 0
    assert main(["--models", str(models), "--artifacts", str(artifacts)]) == 0
    assert capsys.readouterr().out.split() == [str(models / "pets" / "1"),
                                               str(models / "pets" / "2")]
    assert sorted(os.listdir(models / "pets")) == ["1", "2"]  # no staging left behind
    assert sorted(os.listdir(models / "pets" / "2")) == ["cam_head.npy", "card.json",
                                                         "model.tflite"]
    card = load_card(models / "pets" / "2")
    assert (card.name, card.version, card.created_at) == ("pets", 2, "2026-11-28T10:00:00+00:00")
    servable = load_servable("pets", 2, models / "pets" / "2", open_model=FakeModel)
    assert servable.head_weights is not None


def test_deploy_under_another_name_without_head_weights(tmp_path):
    write_artifact(tmp_path / "run", name="pets", head=False)
    target = deploy(tmp_path / "run", tmp_path / "models", name="pets-b")
    assert target == tmp_path / "models" / "pets-b" / "1"
    assert sorted(os.listdir(target)) == ["card.json", "model.tflite"]
    assert load_card(target).name == "pets-b"


def test_labels_are_set_and_kept(artifacts, tmp_path):
    models = tmp_path / "models"
    deploy(artifacts / "pets-old", models, label="stable")
    deploy(artifacts / "pets-new", models, label="canary")
    deploy(artifacts / "pets-new", models, label="stable")
    labels = json.loads((models / "pets" / "labels.json").read_text())
    assert labels == {"stable": 3, "canary": 2}
    assert not [p for p in os.listdir(models / "pets") if p.startswith(".")]


def test_no_version_directory_is_visible_before_it_is_complete(artifacts, tmp_path, monkeypatch):
    """While files are copied, only a hidden staging directory exists; a failure removes it."""
    models = tmp_path / "models"
    seen = []
    copy = deploy_module.shutil.copyfile

    def watching_copy(source, target):
        seen.append(sorted(os.listdir(models / "pets")))
        if source.name == "cam_head.npy":
            raise OSError(28, "No space left on device")
        return copy(source, target)

    monkeypatch.setattr(deploy_module.shutil, "copyfile", watching_copy)
    assert main([str(artifacts / "pets-new"), "--models", str(models)]) == 2
    assert len(seen) == 2 and all(len(names) == 1 and names[0].startswith(".tmp-1-")
                                  for names in seen)
    assert os.listdir(models / "pets") == []


def test_a_lost_race_for_a_version_number_is_refused(artifacts, tmp_path, monkeypatch, capsys):
    models = tmp_path / "models"
    rename = os.rename

    def racing_rename(source, target):  # another deploy publishes version 1 first
        monkeypatch.setattr(deploy_module.os, "rename", rename)
        deploy(artifacts / "pets-old", models)
        return rename(source, target)

    monkeypatch.setattr(deploy_module.os, "rename", racing_rename)
    assert main([str(artifacts / "pets-new"), "--models", str(models)]) == 2
    assert "cannot publish" in capsys.readouterr().err
    assert sorted(os.listdir(models / "pets")) == ["1"]
    assert load_card(models / "pets" / "1").created_at.startswith("2026-11-27")


def test_tampered_artifact_is_refused(artifacts, tmp_path, capsys):
    (artifacts / "pets-new" / "model.tflite").write_bytes(model_bytes(classes=3))
    assert main([str(artifacts / "pets-new"), "--models", str(tmp_path / "models")]) == 2
    assert "sha256 mismatch: model.tflite is" in capsys.readouterr().err
    assert os.listdir(tmp_path / "models" / "pets") == []


@pytest.mark.parametrize("args, message", [
    (["{artifacts}/pets-failed"], "is not deployable"),
    (["{artifacts}/notes"], "no card.json"),
    (["{artifacts}/pets-new", "--name", ".hidden"], "bad model name '.hidden'"),
])
def test_refusals_are_one_line_and_exit_2(artifacts, tmp_path, capsys, args, message):
    argv = [a.format(artifacts=artifacts) for a in args] + ["--models", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deploy: error: ") and message in err and "Traceback" not in err


def test_refuses_when_nothing_is_deployable(tmp_path, capsys):
    write_artifact(tmp_path / "artifacts" / "run", deployable=False)
    assert main(["--models", str(tmp_path / "m"), "--artifacts", str(tmp_path / "artifacts")]) == 2
    assert "no deployable artifact under" in capsys.readouterr().err
    with pytest.raises(DeployError, match="no deployable artifact"):
        newest_deployable(tmp_path / "artifacts")


def test_a_model_that_would_not_load_is_never_published(deployable, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.undo()  # the real LiteRT interpreter
    models = tmp_path / "models"
    deploy(deployable("gap"), models)
    broken = broken_copy(deployable("gap"), tmp_path)
    assert main([str(broken), "--models", str(models)]) == 2
    error = capsys.readouterr().err
    assert "would not load, so nothing was published" in error and "model.tflite" in error
    assert sorted(os.listdir(models / "gap")) == ["1"]  # no version 2, no staging left
