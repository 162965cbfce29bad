"""The layout's rules (docs/ARCHITECTURE.md): which room may import what."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SERVING = ROOT / "serving"
TRANSPORT_OR_METRICS = ("grpc", "grpc_health", "grpc_reflection", "prometheus_client")
# Only these may import a transport or a metrics library: the data plane stays testable alone.
MAY_IMPORT_THEM = ("api/", "observe/", "client.py", "ab.py", "protos_gen/", "__main__.py")
ROOMS = ("api", "inference", "batching", "runtime", "image", "cam", "repository", "routing",
         "observe")
DATA_PLANE = ("serving.inference.dataplane", "serving.inference.attachments",
              "serving.batching.batcher", "serving.runtime.explain", "serving.image.decode",
              "serving.cam", "serving.cam.faithfulness", "serving.repository.manager",
              "serving.repository.source", "serving.repository.publish", "serving.routing",
              "serving.observe.drift", "serving.config", "serving.card")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_transport_and_observe_import_grpc_or_prometheus():
    offenders = {}
    for path in sorted(SERVING.rglob("*.py")):
        relative = path.relative_to(SERVING).as_posix()
        if relative.startswith(MAY_IMPORT_THEM):
            continue
        found = imported_roots(path) & set(TRANSPORT_OR_METRICS)
        if found:
            offenders[relative] = sorted(found)
    assert offenders == {}


def test_the_rule_would_catch_an_offender(tmp_path):
    module = tmp_path / "batcher.py"
    module.write_text("import threading\nfrom prometheus_client import Counter\n")
    assert imported_roots(module) & set(TRANSPORT_OR_METRICS) == {"prometheus_client"}


def test_the_data_plane_loads_neither_grpc_nor_prometheus_nor_tensorflow():
    """Transitively, in a fresh interpreter: not even an indirect import."""
    code = (f"import importlib, sys\nfor m in {DATA_PLANE!r}: importlib.import_module(m)\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'prometheus_client', "
            "'tensorflow', 'keras', 'training'})\nprint(bad)\nsys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_server_imports_no_tensorflow():
    code = ("import sys, serving.api.server, serving.client, serving.repository.publish; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'training')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_owns(room):
    header = ast.get_docstring(ast.parse((SERVING / room / "__init__.py").read_text()))
    assert header and len(header.split()) >= 12, f"serving/{room}/__init__.py needs a header"
