import contextlib
import functools
import logging
import random
import threading
from pathlib import Path

import pytest

from serving.card import InputSpec, ModelCard
from serving.repository.loader import LoadError, load_servable
from serving.repository.manager import ModelManager, ModelNotFound
from serving.repository.servable import Servable
from serving.repository.source import DirectorySource

from .fakes import FakeModel, model_bytes, write_artifact, write_version

CARD = ModelCard(labels=["cat", "dog"], input=InputSpec(4, 4), normalization={},
                 model={}, dataset={}, deployable=True)
DIR = Path("unused")
load_fake = functools.partial(load_servable, open_model=FakeModel)


@contextlib.contextmanager
def holding(manager, *args, **kwargs):
    """A request's hold on a servable: acquired, then released whatever happens."""
    servable = manager.acquire(*args, **kwargs)
    try:
        yield servable
    finally:
        servable.release()


def memory_loader(name, version, path, fail=frozenset()):
    """Builds servables without touching disk; versions in ``fail`` fail to load."""
    if version in fail:
        raise LoadError(f"version {version} is broken")
    return Servable(name, version, CARD, Path(path), model=object(), model_factory=object)


def versions(*numbers):
    return {v: DIR for v in numbers}


class Events(list):
    def __call__(self, event, name, version, details):
        self.append((event, name, version, details))

    def kinds(self):
        return [(event, version) for event, _, version, _ in self]


def test_get_latest_version_and_label():
    manager = ModelManager(loader=memory_loader)
    assert not manager.ready()
    manager.set_aspired("pets", versions(1, 2, 3), {"stable": 2})
    assert manager.ready() and manager.ready("pets") and not manager.ready("cars")
    assert manager.get("pets").version == 3
    assert manager.get("pets", version=1).version == 1
    assert manager.get("pets", label="stable").version == 2
    assert manager.models() == {"pets": [1, 2, 3]}
    assert manager.labels() == {"pets": {"stable": 2}}
    with pytest.raises(ValueError, match="not both"):
        manager.get("pets", version=1, label="stable")


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="cars"), "no model 'cars'; models served: birds, pets"),
    (dict(name="pets", version=9), "model 'pets' has no version 9; versions: 1, 2"),
    (dict(name="pets", label="canary"), "model 'pets' has no label 'canary'; labels: stable=1"),
    (dict(name="birds", label="stable"), "model 'birds' has no label 'stable'; labels: none"),
])
def test_not_found_names_what_is_served(kwargs, message):
    manager = ModelManager(loader=memory_loader)
    manager.set_aspired("pets", versions(1, 2), {"stable": 1})
    manager.set_aspired("birds", versions(1))
    with pytest.raises(ModelNotFound) as raised:
        manager.get(**kwargs)
    assert str(raised.value) == message
    with pytest.raises(ModelNotFound), holding(manager, **kwargs):
        pass


def test_versions_no_longer_aspired_are_unloaded_with_events():
    events = Events()
    manager = ModelManager(loader=memory_loader, on_event=events)
    manager.set_aspired("pets", versions(1))
    first = manager.get("pets")
    callbacks = []
    first.drift = "attached"
    first.on_unload.append(lambda: callbacks.append("stopped batcher"))
    manager.set_aspired("pets", versions(2))
    assert manager.wait_for_unloads(5)
    assert first.unloaded and first.drift is None and first.take_interpreter() is not None
    assert callbacks == ["stopped batcher"]
    assert events.kinds() == [("loaded", 1), ("loaded", 2), ("unloaded", 1)]
    assert events[-1][3]["drained"] is True and events[0][3]["seconds"] >= 0
    manager.set_aspired("pets", {})
    assert not manager.ready() and manager.models() == {}
    assert manager.close(5)


def test_tampered_version_is_rejected_and_the_old_one_keeps_serving(tmp_path, caplog):
    events = Events()
    manager = ModelManager(loader=load_fake, on_event=events)
    source = DirectorySource(tmp_path)
    write_version(tmp_path, "pets", 1)
    source.poll(manager)
    write_version(tmp_path, "pets", 2)
    (tmp_path / "pets" / "2" / "model.tflite").write_bytes(model_bytes(classes=3))
    with caplog.at_level(logging.WARNING, logger="sightline.repository"):
        source.poll(manager)
    assert manager.get("pets").version == 1
    assert manager.load_failures == {"pets": 1}
    assert "pets version 2 failed to load" in caplog.text and "sha256 mismatch" in caplog.text
    assert events.kinds() == [("loaded", 1), ("load_failed", 2)]
    assert events[-1][3]["reason"].startswith("sha256 mismatch: model.tflite is")
    assert manager.wait_for_unloads(5) and not manager.get("pets").unloaded


def test_a_cold_start_with_a_broken_newest_version_serves_the_newest_that_loads(caplog):
    """The defect: a restart with a broken newest version on disk served nothing at all."""
    events = Events()
    manager = ModelManager(loader=functools.partial(memory_loader, fail={3, 4, 6}),
                           on_event=events)
    with caplog.at_level(logging.WARNING, logger="sightline.repository"):
        manager.set_aspired("pets", versions(4), {}, fallbacks=versions(3, 2, 1))
    assert manager.models() == {"pets": [2]}
    assert events.kinds() == [("load_failed", 4), ("load_failed", 3), ("loaded", 2)]
    assert manager.load_failures == {"pets": 2}
    assert "serving version 2, the newest that does" in caplog.text
    manager.set_aspired("pets", versions(5), {}, fallbacks=versions(4, 3, 2, 1))
    assert manager.models() == {"pets": [5]}  # a good new version replaces the fallback
    manager.set_aspired("pets", versions(6), {}, fallbacks=versions(5, 4, 3, 2, 1))
    assert manager.models() == {"pets": [5]}  # hot: what is served keeps serving


def test_when_no_version_loads_nothing_is_served(caplog):
    manager = ModelManager(loader=functools.partial(memory_loader, fail={1, 2}))
    manager.set_aspired("pets", versions(2), {}, fallbacks=versions(1))
    assert not manager.ready() and "no version of pets loads" in caplog.text


def test_a_label_aimed_at_a_failed_version_stays_on_its_old_version(caplog):
    manager = ModelManager(loader=functools.partial(memory_loader, fail={3}))
    manager.set_aspired("pets", versions(1, 2), {"stable": 1, "canary": 2})
    manager.set_aspired("pets", versions(3, 4), {"stable": 3, "canary": 4})
    assert manager.labels() == {"pets": {"stable": 1, "canary": 4}}
    assert manager.models() == {"pets": [1, 4]}  # 1 stays because stable still needs it
    assert "label stable of pets stays on version 1: version 3 is not loaded" in caplog.text


def test_drain_waits_for_holders():
    events = Events()
    manager = ModelManager(loader=memory_loader, on_event=events)
    manager.set_aspired("pets", versions(1))
    with holding(manager, "pets") as held:
        manager.set_aspired("pets", versions(2))
        assert manager.get("pets").version == 2
        assert not manager.wait_for_unloads(0.05)
        assert not held.unloaded and held.holders == 1
    assert manager.wait_for_unloads(5)
    assert held.unloaded and held.holders == 0
    assert events.kinds()[-1] == ("unloaded", 1)


def test_drain_gives_up_after_drain_timeout(caplog):
    events = Events()
    manager = ModelManager(loader=memory_loader, on_event=events, drain_timeout=0.01)
    manager.set_aspired("pets", versions(1))
    stuck = manager.get("pets")
    assert stuck.acquire()
    manager.set_aspired("pets", versions(2))
    assert manager.wait_for_unloads(5)
    assert stuck.unloaded and events[-1][3]["drained"] is False
    assert "still held by 1 requests" in caplog.text


def test_acquire_retries_when_a_swap_lands_between_get_and_acquire():
    manager = ModelManager(loader=memory_loader)
    manager.set_aspired("pets", versions(1))
    stale = manager.get("pets")  # read from the snapshot just before the swap
    manager.set_aspired("pets", versions(2))
    assert manager.wait_for_unloads(5) and not stale.acquire()
    reads = iter([stale])
    real_get = manager.get
    manager.get = lambda *args, **kwargs: next(reads, None) or real_get(*args, **kwargs)
    with holding(manager, "pets") as servable:
        assert servable.version == 2 and servable.holders == 1


def test_hot_swap_under_concurrent_requests_never_fails():
    """Every swap retires the version requests are holding (97 of 98 drains wait on holders)."""
    manager = ModelManager(loader=functools.partial(memory_loader, fail={7, 21}),
                           drain_timeout=30)
    manager.set_aspired("pets", versions(1), {"stable": 1})
    stop, errors, served = threading.Event(), [], []

    def request(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                kwargs = rng.choice([{}, {"label": "stable"}])
                with holding(manager, "pets", **kwargs) as servable:
                    assert not servable.unloaded, f"{servable} was unloaded before acquire"
                    threading.Event().wait(rng.random() * 1e-3)
                    assert not servable.unloaded, f"{servable} was unloaded while held"
                    served.append(servable.version)
                manager.get("pets", label="stable")
            except Exception as exc:  # any failure at all is the bug under test
                errors.append(repr(exc))

    threads = [threading.Thread(target=request, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for version in range(2, 100):
        stop.wait(0.002)  # let requests pile up on the current versions
        manager.set_aspired("pets", versions(version), {"stable": version})
    stop.set()
    for thread in threads:
        thread.join(10)
    assert manager.close(10)
    assert errors == []
    assert len(set(served)) > 5 and len(served) > 100


def test_from_directory_serves_one_artifact(tmp_path):
    write_artifact(tmp_path / "a", name="pets")
    write_artifact(tmp_path / "b", name="pets", version=5)
    assert ModelManager.from_directory(tmp_path / "a", loader=load_fake).models() == {"pets": [1]}
    assert ModelManager.from_directory(tmp_path / "b", loader=load_fake).models() == {"pets": [5]}


@pytest.mark.parametrize("damage, match", [
    (lambda path: write_artifact(path, deployable=False), "deployable: false"),
    (lambda path: (path / "card.json").write_text("{"), "cannot read"),
])
def test_from_directory_raises_when_the_artifact_cannot_load(tmp_path, damage, match):
    write_artifact(tmp_path)
    damage(tmp_path)
    with pytest.raises(LoadError, match=match):
        ModelManager.from_directory(tmp_path, loader=load_fake)


def test_add_refuses_a_version_already_served():
    manager = ModelManager(loader=memory_loader)
    manager.set_aspired("pets", versions(1))
    with pytest.raises(ValueError, match="pets version 1 is already served"):
        manager.add(memory_loader("pets", 1, DIR))
