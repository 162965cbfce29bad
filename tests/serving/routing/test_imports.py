"""The room's import rule, checked on every module in it (tests/serving/test_rooms.py imports
only the package): numpy, scipy, PyYAML and the standard library; of the server's own, only
its error tree."""

import ast
import subprocess
import sys

from tests.conftest import ROOT

ROUTING = ROOT / "serving" / "routing"
THIRD_PARTY_ALLOWED = {"numpy", "scipy", "yaml"}
OURS_ALLOWED = ("serving.routing", "serving.errors")
FORBIDDEN_LOADED = {"grpc", "prometheus_client", "tensorflow", "keras", "training"}


def imported_modules(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_routing_imports_only_numpy_scipy_yaml_the_stdlib_errors_and_itself():
    offenders = {}
    for path in sorted(ROUTING.glob("*.py")):
        bad = {name for name in imported_modules(path)
               if not (name.split(".")[0] in sys.stdlib_module_names | THIRD_PARTY_ALLOWED
                       or name.startswith(OURS_ALLOWED))}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_the_rule_would_catch_an_offender(tmp_path):
    module = tmp_path / "router.py"
    module.write_text("import hashlib\nfrom serving.observe import metrics\nimport grpc\n")
    assert imported_modules(module) == {"hashlib", "serving.observe", "grpc"}


def test_loading_every_routing_module_loads_no_transport_metrics_or_tensorflow():
    modules = sorted(f"serving.routing.{path.stem}" for path in ROUTING.glob("[!_]*.py"))
    assert "serving.routing.decide" in modules
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "ours = {m for m in sys.modules if m.startswith(('serving.api', 'serving.observe'))}\n"
            f"print(sorted(loaded & {FORBIDDEN_LOADED!r} | ours))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
