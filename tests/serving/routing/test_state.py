"""StateStore: a round trip, atomic saves (no temporary left, a crash keeps the old file), a
corrupt file read as none, a changed definition starting afresh, and a terminal state that
outlives a restart."""

import dataclasses
import json
import logging
import os
import stat

import pytest

from serving.routing.decide import CanaryStep, ExperimentConfig, Mode, State
from serving.routing.experiment import Experiment, VariantSpec
from serving.routing.state import ExperimentState, StateStore, config_digest

NOW = 1_700_000_000.0
CANARY = Experiment("pets-next", "pets", VariantSpec(label="stable"), VariantSpec(version=4),
                    ExperimentConfig(Mode.CANARY, steps=(CanaryStep(0.05), CanaryStep(0.25))),
                    sticky_key="x-user-id")


@pytest.fixture
def store(tmp_path) -> StateStore:
    """On a model repository that exists, with no .experiments/ yet."""
    (tmp_path / "models").mkdir()
    return StateStore(tmp_path / "models" / ".experiments")


def advanced(store: StateStore) -> ExperimentState:
    return dataclasses.replace(store.initial(CANARY, NOW), candidate_share=0.25, step_index=1,
                               step_started_at=NOW + 600, reason="step 1/2 at 5% passed",
                               updated_at=NOW + 600)


def test_initial_is_running_at_the_first_step(store):
    state = store.initial(CANARY, NOW)
    assert (state.state, state.candidate_share, state.step_index, state.step_started_at,
            state.updated_at) == (State.RUNNING, 0.05, 0, NOW, NOW)
    assert state.config_digest == config_digest(CANARY)


def test_save_and_load_round_trip(store):
    assert store.load("pets-next") is None and not store.directory.exists()
    state = advanced(store)
    store.save(state)
    assert store.load("pets-next") == state
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o755
    assert json.loads((store.directory / "pets-next.json").read_text())["state"] == "running"
    store.remove("pets-next")
    store.remove("pets-next")  # nothing left: not an error
    assert store.load("pets-next") is None


def test_save_leaves_no_temporary_file(store):
    store.save(store.initial(CANARY, NOW))
    store.save(advanced(store))
    assert sorted(p.name for p in store.directory.iterdir()) == ["pets-next.json"]


def test_save_syncs_the_file_before_the_rename_and_the_directory_after(store, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *a: events.append("replace") or real_replace(*a))
    store.save(store.initial(CANARY, NOW))
    assert events == ["file", "replace", "dir"]


def test_a_crash_before_the_rename_keeps_the_old_file(store, monkeypatch):
    old = store.initial(CANARY, NOW)
    store.save(old)

    def crash(source, target):
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        store.save(advanced(store))
    monkeypatch.undo()
    assert store.load("pets-next") == old
    assert sorted(p.name for p in store.directory.iterdir()) == ["pets-next.json"]


@pytest.mark.parametrize("content", [b"{", b"\xff\xfe", b"[]", b'{"name": "pets-next"}',
                                     b"STATE", None], ids=[
    "truncated", "not utf-8", "not an object", "missing fields", "garbage", "wrong values"])
def test_a_corrupt_file_is_none_and_a_warning(store, caplog, content):
    store.save(store.initial(CANARY, NOW))
    path = store.directory / "pets-next.json"
    if content is None:
        data = json.loads(path.read_text())
        data["candidate_share"] = 1.5
        content = json.dumps(data).encode()
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="sightline.routing"):
        assert store.load("pets-next") is None
    assert "pets-next.json is unreadable" in caplog.text


def test_a_state_file_for_another_experiment_is_refused(store, caplog):
    store.save(store.initial(CANARY, NOW))
    (store.directory / "pets-next.json").rename(store.directory / "other.json")
    with caplog.at_level(logging.WARNING, logger="sightline.routing"):
        assert store.load("other") is None
    assert "it holds experiment 'pets-next'" in caplog.text


def test_restore_resumes_under_the_same_definition(store):
    state = advanced(store)
    store.save(state)
    assert store.restore(CANARY, NOW + 9_999) == state
    assert store.restore(dataclasses.replace(CANARY, name="cats-next"), NOW).reason == "started"


def test_restore_starts_afresh_when_the_definition_changed(store, caplog):
    store.save(dataclasses.replace(advanced(store), state=State.ROLLED_BACK, candidate_share=0.0))
    changed = dataclasses.replace(CANARY, salt="pets-next-2")
    assert config_digest(changed) != config_digest(CANARY)
    with caplog.at_level(logging.WARNING, logger="sightline.routing"):
        fresh = store.restore(changed, NOW + 60)
    assert (fresh.state, fresh.candidate_share, fresh.step_index, fresh.step_started_at) == (
        State.RUNNING, 0.05, 0, NOW + 60)
    assert fresh.config_digest == config_digest(changed)
    assert "was rolled_back" in fresh.reason
    assert "definition changed" in caplog.text


def test_a_terminal_state_survives_a_restart(store):
    rolled_back = dataclasses.replace(advanced(store), state=State.ROLLED_BACK,
                                      candidate_share=0.0, reason="latency p99 ratio 1.5")
    store.save(rolled_back)
    after_restart = StateStore(store.directory)
    restored = after_restart.restore(CANARY, NOW + 86_400)
    assert restored == rolled_back and restored.state.terminal


def test_the_digest_ignores_how_a_number_is_spelled():
    spelled = dataclasses.replace(CANARY, config=ExperimentConfig(
        Mode.CANARY, steps=(CanaryStep(0.05, min_seconds=300), CanaryStep(0.25, 1000, 300.0))))
    assert config_digest(spelled) == config_digest(CANARY)
    assert len(config_digest(CANARY)) == 64


def test_a_name_cannot_leave_the_directory(store):
    with pytest.raises(ValueError, match="not an experiment name"):
        store.load("../labels")
