import dataclasses

import numpy as np
import pytest

from serving.card import FileEntry, load_card, save_card
from serving.repository.loader import LoadError, load_servable

from .fakes import FakeModel, model_bytes, write_artifact


def load(path, version=1, **kwargs):
    return load_servable("pets", version, path, open_model=FakeModel, **kwargs)


def test_load_checks_warms_up_and_builds_a_servable(tmp_path):
    card = write_artifact(tmp_path)
    servable = load(tmp_path, warmup_batch_sizes=(1, 8))
    assert (servable.name, servable.version, servable.path) == ("pets", 1, tmp_path)
    assert servable.card == card
    checked = servable.take_interpreter()  # the one the loader ran serves first: none idles
    # Both signatures at each size: cam_inputs' probabilities count as a classify call too.
    assert checked.classify_batches == [1, 1, 8, 8] and checked.cam_calls == 2
    assert servable.head_weights.shape == (4, 2)
    fresh = servable.take_interpreter()
    assert isinstance(fresh, FakeModel) and fresh is not checked and fresh.classify_batches == []


def test_load_without_head_weights(tmp_path):
    write_artifact(tmp_path, head=False)
    assert load(tmp_path).head_weights is None


def _damage_model(path):
    (path / "model.tflite").write_bytes(model_bytes() + b" ")


def _damage_head(path):
    np.save(path / "cam_head.npy", np.zeros((4, 2), np.float32))


def _undeploy(path):
    save_card(dataclasses.replace(load_card(path), deployable=False), path)


def _forget_model_hash(path):
    card = load_card(path)
    del card.files["model.tflite"]
    save_card(card, path)


@pytest.mark.parametrize("damage, match", [
    (_damage_model, r"sha256 mismatch: model.tflite is [0-9a-f]{64}, card says [0-9a-f]{64}"),
    (_damage_head, r"sha256 mismatch: cam_head.npy is"),
    (_undeploy, "deployable: false"),
    (_forget_model_hash, "card has no sha256 for model.tflite"),
    (lambda path: (path / "card.json").unlink(), "no card.json"),
    (lambda path: (path / "cam_head.npy").unlink(), "cannot read cam_head.npy"),
])
def test_load_rejects_a_directory_that_disagrees_with_its_card(tmp_path, damage, match):
    write_artifact(tmp_path)
    damage(tmp_path)
    with pytest.raises(LoadError, match=match):
        load(tmp_path)


@pytest.mark.parametrize("model, match", [
    (model_bytes(classes=3), "model has 3 classes but the card lists 2 labels"),
    (model_bytes(size=(8, 8)), r"model takes \(8, 8, 3\) .* card says \(4, 4, 3\)"),
    (b"not a model", "cannot open model.tflite"),
])
def test_load_rejects_a_model_that_disagrees_with_its_card(tmp_path, model, match):
    write_artifact(tmp_path, model=model)
    with pytest.raises(LoadError, match=match):
        load(tmp_path)


def test_load_rejects_a_card_of_another_version(tmp_path):
    write_artifact(tmp_path, version=3)
    with pytest.raises(LoadError, match="card says version 3 but the directory is version 4"):
        load(tmp_path, version=4)


def test_load_rejects_head_weights_of_the_wrong_shape(tmp_path):
    write_artifact(tmp_path)
    np.save(tmp_path / "cam_head.npy", np.ones((4, 5), np.float32))
    card = load_card(tmp_path)
    card.files["cam_head.npy"] = FileEntry.of(tmp_path / "cam_head.npy")
    save_card(card, tmp_path)
    with pytest.raises(LoadError, match=r"cam_head.npy has shape \(4, 5\); expected"):
        load(tmp_path)


def test_load_reports_a_failing_warm_up(tmp_path):
    write_artifact(tmp_path)

    class Broken(FakeModel):
        def cam_inputs(self, images, class_onehot=None):
            raise RuntimeError("no cam_inputs signature")

    with pytest.raises(LoadError, match="warm-up cam_inputs at batch size 1 failed: no cam_inp"):
        load_servable("pets", 1, tmp_path, open_model=Broken)
