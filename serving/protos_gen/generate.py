"""Generate the Python gRPC stubs from ``protos/`` into this package (``make protos``).

The stubs are committed, so serving needs no protoc; ``tests/serving/api/test_protos.py`` fails
when they are stale. Proto files are mapped to the virtual path ``serving/protos_gen/`` so the
generated imports are absolute (``serving.protos_gen.sightline...``) and need no sys.path edits.
"""

from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
PACKAGE = "serving/protos_gen"


def generate(out: Path = ROOT) -> list[Path]:
    """Run protoc on every .proto under protos/; returns the files written under ``out``."""
    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    args = ["protoc", f"-I{PACKAGE}={PROTOS}", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *(f"{PACKAGE}/{source}" for source in sources)]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")
    written = sorted((out / PACKAGE).rglob("*_pb2*.py*"))
    for directory in {path.parent for path in written}:
        while directory != out / PACKAGE:
            (directory / "__init__.py").touch()
            directory = directory.parent
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT  # tests generate into a temp dir
    for path in generate(out):
        print(path.relative_to(out), file=sys.stderr)
