"""The committed stubs are what ``make protos`` makes from ``protos/`` today."""

import filecmp
import subprocess
import sys

from serving.protos_gen.generate import PACKAGE, ROOT


def test_generated_stubs_are_current(tmp_path):
    # In a subprocess: protoc inside a process that already loaded the stubs can crash.
    script = ROOT / PACKAGE / "generate.py"
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, cwd=ROOT)
    fresh = sorted((tmp_path / PACKAGE).rglob("*_pb2*.py*"))
    assert fresh, "protoc wrote nothing"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `make protos`"
        stale = f"{committed} is stale: run `make protos`"
        assert filecmp.cmp(path, committed, shallow=False), stale
    committed = {p.relative_to(ROOT) for p in (ROOT / PACKAGE).rglob("*_pb2*.py*")}
    assert committed == {p.relative_to(tmp_path) for p in fresh}, "stubs of deleted protos remain"
