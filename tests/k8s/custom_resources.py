"""Validate the custom resources that kubernetes-validate has no schema for. Runs in .venv-k8s:

    .venv-k8s/bin/python tests/k8s/custom_resources.py [--kubernetes 1.33.0] FILE...

prints one JSON object, {"checked": ["Kind/name", ...], "errors": ["Kind/name: path: why", ...]},
and exits 1 when there is an error (an object of a kind it has no schema for is one).

- ServiceMonitor, PrometheusRule: the pydantic models that cloudcoil generated from the
  prometheus-operator v0.80.1 CRDs (PyPI cloudcoil-models-prometheus-operator 0.80.1.0,
  Apache-2.0): types, enums and patterns, validated strictly. pydantic drops unknown fields
  instead of refusing them, so each object is dumped back and any field that did not survive
  the round trip is an error.
- ServingRuntime, InferenceService: the OpenAPI models of the KServe SDK (PyPI kserve 0.21.0,
  Apache-2.0, installed without its dependencies; only kserve.models is imported, past the
  package's __init__, which would load its model server). Each field is checked against the
  model's openapi_types (unknown fields and wrong types are errors), each model is built so
  that its own required-field and enum checks run, and the Kubernetes types inside (Container,
  ObjectMeta, ...) are checked against kubernetes-validate's strict schema of that version.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import types
from typing import Any

import yaml

PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
KSERVE = {"ServingRuntime": ("serving.kserve.io/v1alpha1", "V1alpha1ServingRuntime"),
          "InferenceService": ("serving.kserve.io/v1beta1", "V1beta1InferenceService")}
PRIMITIVES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
              "datetime": (str,), "date": (str,)}


# -- prometheus-operator ------------------------------------------------------------------------

def _dropped(given: Any, kept: Any, path: str) -> list[str]:
    """Paths of the fields in ``given`` that are missing from ``kept``."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            where = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(f"{where}: unknown field")
            else:
                out.extend(_dropped(value, kept[key], where))
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [error for index, (a, b) in enumerate(zip(given, kept, strict=False))
                for error in _dropped(a, b, f"{path}[{index}]")]
    return []


def prometheus_operator(obj: dict) -> list[str]:
    import pydantic
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"])
    try:
        parsed = model.model_validate(obj, strict=True)
    except pydantic.ValidationError as exc:
        return [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()]
    return _dropped(obj, parsed.model_dump(mode="json", by_alias=True, exclude_unset=True), "")


# -- KServe -------------------------------------------------------------------------------------

def _kserve_models() -> types.ModuleType:
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    import kserve.models

    return kserve.models


class KubernetesTypes:
    """kubernetes-validate's strict definitions, by the Python client's names (V1Container)."""

    def __init__(self, version: str):
        import jsonschema
        import referencing
        from kubernetes_validate import utils

        self.jsonschema = jsonschema
        directory = f"kubernetes-json-schema/v{version}-local-strict"
        self.definitions = utils.schema_contents(f"{directory}/_definitions.json", version)
        resource = referencing.Resource.from_contents(self.definitions)
        self.registry = resource @ referencing.Registry()
        self.names: dict[str, list[str]] = {}
        for key in self.definitions["$defs"]:
            *_, group_version, kind = key.split(".")
            if re.fullmatch(r"v\d+((alpha|beta)\d+)?", group_version):
                self.names.setdefault(group_version.capitalize() + kind, []).append(key)

    def errors(self, name: str, value: Any, path: str) -> list[str]:
        keys = self.names.get(name, [])
        preferred = [k for k in keys if k.startswith(("io.k8s.api.core.", "io.k8s.apimachinery."))]
        keys = preferred or keys
        if len(keys) != 1:
            return [f"{path}: no single Kubernetes type named {name} ({keys or 'none'})"]
        schema = {"$ref": f"{self.definitions['$id']}#/$defs/{keys[0]}"}
        validator = self.jsonschema.Draft202012Validator(schema, registry=self.registry)
        return [f"{path}{''.join(f'.{p}' for p in error.path)}: {error.message}"
                for error in validator.iter_errors(value)]


def _check(value: Any, kind: str, path: str, models: types.ModuleType,
           kubernetes: KubernetesTypes) -> list[str]:
    if kind in PRIMITIVES:
        wanted = PRIMITIVES[kind]
        if not isinstance(value, wanted) or (bool not in wanted and isinstance(value, bool)):
            return [f"{path}: must be {kind}; got {value!r}"]
        return []
    if kind == "object":
        return []
    if match := re.fullmatch(r"list\[(.+)\]", kind):
        if not isinstance(value, list):
            return [f"{path}: must be a list; got {value!r}"]
        return [error for index, item in enumerate(value)
                for error in _check(item, match[1], f"{path}[{index}]", models, kubernetes)]
    if match := re.fullmatch(r"dict\(str, (.+)\)", kind):
        if not isinstance(value, dict):
            return [f"{path}: must be a mapping; got {value!r}"]
        return [error for key, item in value.items()
                for error in _check(item, match[1], f"{path}.{key}", models, kubernetes)]
    model = getattr(models, kind, None)
    if model is None:
        return kubernetes.errors(kind, value, path)
    if not isinstance(value, dict):
        return [f"{path}: must be a mapping ({kind}); got {value!r}"]
    attributes = {json_key: name for name, json_key in model.attribute_map.items()}
    errors, arguments = [], {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else key
        if key not in attributes:
            errors.append(f"{where}: unknown field of {kind}")
            continue
        errors.extend(_check(item, model.openapi_types[attributes[key]], where, models,
                             kubernetes))
        arguments[attributes[key]] = item
    try:
        model(**arguments)  # the model's own checks: required fields, allowed values
    except ValueError as exc:
        errors.append(f"{path or kind}: {exc}")
    return errors


def kserve(obj: dict, kubernetes: KubernetesTypes) -> list[str]:
    api_version, model = KSERVE[obj["kind"]]
    if obj.get("apiVersion") != api_version:
        return [f"apiVersion: {obj['kind']} is {api_version}; got {obj.get('apiVersion')!r}"]
    return _check(obj, model, "", _kserve_models(), kubernetes)


# -- the command --------------------------------------------------------------------------------

def validate(obj: dict, kubernetes: KubernetesTypes) -> list[str]:
    if obj.get("apiVersion") == PROMETHEUS_OPERATOR and obj.get("kind") in (
            "ServiceMonitor", "PrometheusRule"):
        return prometheus_operator(obj)
    if obj.get("kind") in KSERVE:
        return kserve(obj, kubernetes)
    return [f"no schema here for {obj.get('apiVersion')} {obj.get('kind')}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubernetes", default="1.33.0",
                        help="kubernetes-validate schema version for the Kubernetes types inside")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    kubernetes = KubernetesTypes(args.kubernetes)
    checked, errors = [], []
    for path in args.files:
        with open(path) as file:
            for obj in yaml.safe_load_all(file):
                if not obj:
                    continue
                name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
                checked.append(name)
                errors.extend(f"{name}: {error}" for error in validate(obj, kubernetes))
    print(json.dumps({"checked": checked, "errors": errors}, indent=1))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
