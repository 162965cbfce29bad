import shutil

import pytest

from serving.repository.policy import All, Latest, Specific, parse_policy
from serving.repository.source import DirectorySource, read_labels

from .fakes import write_version


@pytest.mark.parametrize("policy, versions, expected", [
    (Latest(), [1, 2, 10], {10}),
    (Latest(2), [1, 2, 10], {2, 10}),
    (Latest(5), [3], {3}),
    (Latest(), [], set()),
    (Specific(frozenset({1, 7})), [1, 2, 3], {1}),
    (All(), [1, 2, 3], {1, 2, 3}),
])
def test_policies_select(policy, versions, expected):
    assert policy.select(versions) == expected


@pytest.mark.parametrize("text, expected", [
    ("latest", Latest(1)), ("latest:3", Latest(3)), ("all", All()),
    ("specific:2,5", Specific(frozenset({2, 5}))),
])
def test_parse_policy(text, expected):
    assert parse_policy(text) == expected


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "all:1", "specific:",
                                  "specific:0"])
def test_parse_policy_rejects(text):
    with pytest.raises(ValueError, match="policy|latest|specific"):
        parse_policy(text)


class Recorder:
    def __init__(self):
        self.calls = []

    def set_aspired(self, name, versions, labels, fallbacks=None):
        self.calls.append((name, sorted(versions), dict(labels)))
        self.fallbacks = list(fallbacks or {})


def test_scan_skips_staging_hidden_and_non_version_dirs(tmp_path):
    write_version(tmp_path, "pets", 1)
    write_version(tmp_path, "pets", 2)
    for junk in [".tmp-3-abcd", "_old", "03", "0", "latest"]:
        (tmp_path / "pets" / junk).mkdir()
    (tmp_path / "pets" / "4").write_text("a file, not a version")
    write_version(tmp_path, "_staging", 1)
    write_version(tmp_path, ".hidden", 1)
    found = DirectorySource(tmp_path, All()).scan()
    assert list(found) == ["pets"]
    assert found["pets"].versions == {1: tmp_path / "pets" / "1", 2: tmp_path / "pets" / "2"}


def test_labelled_versions_are_always_aspired(tmp_path):
    for version in (1, 2, 3):
        write_version(tmp_path, "pets", version)
    (tmp_path / "pets" / "labels.json").write_text('{"stable": 1, "canary": 3}')
    aspired = DirectorySource(tmp_path).scan()["pets"]
    assert sorted(aspired.versions) == [1, 3]
    assert aspired.labels == {"stable": 1, "canary": 3}


def test_poll_sends_only_changes_and_unloads_vanished_models(tmp_path):
    write_version(tmp_path, "pets", 1)
    write_version(tmp_path, "cars", 1)
    source, manager = DirectorySource(tmp_path), Recorder()
    assert sorted(source.poll(manager)) == ["cars", "pets"]
    assert source.poll(manager) == []
    write_version(tmp_path, "pets", 2)
    assert source.poll(manager) == ["pets"]
    assert manager.calls[-1] == ("pets", [2], {})
    shutil.rmtree(tmp_path / "cars")
    assert source.poll(manager) == ["cars"]
    assert manager.calls[-1] == ("cars", [], {})
    assert source.poll(manager) == []


def test_bad_labels_file_keeps_the_labels_last_sent(tmp_path, caplog):
    write_version(tmp_path, "pets", 1)
    write_version(tmp_path, "pets", 2)
    (tmp_path / "pets" / "labels.json").write_text('{"stable": 1}')
    source, manager = DirectorySource(tmp_path), Recorder()
    source.poll(manager)
    (tmp_path / "pets" / "labels.json").write_text('{"stable": "one"')
    assert source.poll(manager) == []
    assert "labels.json" in caplog.text
    assert manager.calls == [("pets", [1, 2], {"stable": 1})]


@pytest.mark.parametrize("text, match", [
    ("[1]", "JSON object"), ('{"stable": 0}', "positive version"),
    ('{"stable": true}', "positive version"),
])
def test_read_labels_rejects(tmp_path, text, match):
    (tmp_path / "labels.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_labels(tmp_path)


def test_the_versions_not_chosen_are_fallbacks_newest_first(tmp_path):
    for version in (1, 2, 3, 4):
        write_version(tmp_path, "pets", version)
    (tmp_path / "pets" / "labels.json").write_text('{"stable": 2}')
    manager = Recorder()
    DirectorySource(tmp_path).poll(manager)
    assert manager.calls == [("pets", [2, 4], {"stable": 2})] and manager.fallbacks == [3, 1]
