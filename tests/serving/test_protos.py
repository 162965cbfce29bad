"""The committed stubs are what ``make protos`` makes from ``protos/`` today."""

import filecmp

from serving.protos_gen.generate import PACKAGE, ROOT, generate


def test_generated_stubs_are_current(tmp_path):
    fresh = generate(tmp_path)
    assert fresh, "protoc wrote nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `make protos`"
        stale = f"{committed} is stale: run `make protos`"
        assert filecmp.cmp(path, committed, shallow=False), stale
    committed = {p.relative_to(ROOT) for p in (ROOT / PACKAGE).rglob("*_pb2*.py*")}
    assert committed == {p.relative_to(tmp_path) for p in fresh}, "stubs of deleted protos remain"
