"""The manifests against the server's own code: what the tools cannot know.

The built Deployment's args, env and mounted server.yaml go through serving.config.load_config,
as the pod would; probes name the health services the server registers; shutdown timing adds
up; the HPA's metric is in monitoring/METRICS.md and served by the adapter rule; the canary's
experiments parse with the server's parser.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from serving.api.classifier import SERVICE_NAME as CLASSIFIER
from serving.api.server import SERVICES
from serving.config import ConfigError, load_config
from serving.routing.experiment import parse_experiments
from tests.k8s.conftest import KUSTOMIZATIONS, ROOT, container, needs_kubectl, pod_spec

FLEETS = ("overlays/dev", "overlays/prod", "overlays/canary")
NAMESPACE = "sightline"
SHUTDOWN_MARGIN = 5  # seconds to stop gRPC and unload after the grace (docs/shutdown.md)
CONTROLLER_ARGS = ["controller", "--prometheus", "http://prometheus-operated.monitoring.svc:9090",
                   "--definitions", "/etc/sightline/experiments/experiments.yaml",
                   "--repository", "/models", "--interval-seconds", "30",
                   "--min-window-seconds", "150"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                  "StorageClass", "PriorityClass", "CustomResourceDefinition"}
pytestmark = needs_kubectl


def _quantity(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _environ(server: dict) -> dict[str, str]:
    """The container's env as the kubelet resolves it (Downward API: ceil(limit / divisor))."""
    environ = {}
    for var in server.get("env", []):
        if "value" in var:
            environ[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["resourceFieldRef"]
            limit = _quantity(server["resources"]["limits"][ref["resource"].split(".")[1]])
            environ[var["name"]] = str(math.ceil(limit / _quantity(ref.get("divisor", "1"))))
    return environ


def _mounts(spec: dict, server: dict) -> dict[str, dict]:
    """mount path -> the volume mounted there."""
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    return {mount["mountPath"]: {**volumes[mount["name"]], "readOnly": mount.get("readOnly")}
            for mount in server["volumeMounts"]}


def served(builds, fleet: str, tmp_path: Path):
    """(pod spec, server container, the ServerConfig the pod would load)."""
    built = builds[fleet]
    spec = pod_spec(built.one("Deployment", "sightline"))
    server = container(spec, "server")
    args = list(server["args"])
    config_arg = next(arg for arg in args if arg.startswith("--config="))
    config_dir = str(Path(config_arg.split("=", 1)[1]).parent)
    volume = _mounts(spec, server)[config_dir]
    config_map = built.one("ConfigMap", volume["configMap"]["name"])
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    args[args.index(config_arg)] = config_arg.replace(config_dir, str(tmp_path))
    return spec, server, load_config(args, _environ(server))


@pytest.mark.parametrize("fleet", FLEETS)
def test_the_server_config_loads_and_matches_the_pod(builds, fleet, tmp_path, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)  # a big node: defaults would show
    spec, server, config = served(builds, fleet, tmp_path)
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    mounts = _mounts(spec, server)
    models = mounts[config.model_repository]
    assert models["persistentVolumeClaim"]["claimName"] == "sightline-models"
    assert models["readOnly"], "serving pods only read the repository"
    cpus = math.ceil(_quantity(server["resources"]["limits"]["cpu"]))
    assert (config.worker_count, config.decode_slots) == (cpus, 2 * cpus), (
        "workers and decodes must follow the CPU limit, not the node's cores")
    for path in (config.feedback_key_file, config.admin_token_file):
        secret = mounts[str(Path(path).parent)]["secret"]
        assert secret["defaultMode"] & 0o004 == 0, "the server refuses a world-readable key"
        assert spec["securityContext"]["fsGroup"] == server["securityContext"]["runAsGroup"]


@pytest.mark.parametrize("fleet", FLEETS)
def test_shutdown_timing_adds_up(builds, fleet, tmp_path):
    spec, server, config = served(builds, fleet, tmp_path)
    assert "lifecycle" not in server, "the server drains by itself: a preStop would wait twice"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= config.drain_seconds + config.grace_seconds + SHUTDOWN_MARGIN
    readiness, liveness = server["readinessProbe"], server["livenessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= config.drain_seconds
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace, (
        "liveness reads NOT_SERVING while draining; it must not restart a pod before it exits")


@pytest.mark.parametrize("fleet", FLEETS)
def test_probes_ask_the_services_the_server_registers(builds, fleet, tmp_path):
    _, server, config = served(builds, fleet, tmp_path)
    for probe in ("startupProbe", "readinessProbe"):
        assert server[probe]["grpc"] == {"port": config.port, "service": CLASSIFIER}
    assert server["livenessProbe"]["grpc"] == {"port": config.port, "service": ""}
    assert CLASSIFIER in SERVICES and "" in SERVICES


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_no_object_lands_in_the_default_namespace(builds, directory):
    for obj in builds[directory].require():
        if obj["kind"] not in CLUSTER_SCOPED:
            namespace = obj["metadata"].get("namespace")
            assert namespace not in (None, "default"), (
                f"k8s/{directory}: {obj['kind']}/{obj['metadata']['name']} in {namespace!r}")


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_pods_in_the_namespace_meet_the_restricted_standard(builds, directory):
    """What the namespace's Pod Security admission would refuse, found before an apply; and,
    in the serving fleet's own pods, what this project adds: no API token, a read-only root
    filesystem, UID and GID 10001."""
    ours = not directory.startswith("training")
    for obj in builds[directory].require():
        spec = pod_spec(obj)
        if spec is None or obj["metadata"].get("namespace") != NAMESPACE:
            continue
        where = f"k8s/{directory}: {obj['kind']}/{obj['metadata']['name']}"
        pod = spec.get("securityContext", {})
        for box in spec["containers"] + spec.get("initContainers", []):
            context = box.get("securityContext", {})
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            seccomp = context.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            if ours:
                assert context["readOnlyRootFilesystem"] is True, where
                assert (context["runAsUser"], context["runAsGroup"]) == (10001, 10001), where
        if ours:
            assert spec.get("automountServiceAccountToken") is False, where


def test_services_reach_the_pods_and_the_monitor_scrapes_one(builds):
    built = builds["overlays/prod"]
    pod_labels = built.one("Deployment", "sightline")["spec"]["template"]["metadata"]["labels"]
    cluster_ip, headless = built.one("Service", "sightline"), built.one("Service",
                                                                        "sightline-headless")
    assert headless["spec"]["clusterIP"] == "None"
    for service in (cluster_ip, headless):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        grpc = next(port for port in service["spec"]["ports"] if port["name"] == "grpc")
        assert (grpc["port"], grpc["appProtocol"]) == (8500, "kubernetes.io/h2c")
    monitor = built.one("ServiceMonitor", "sightline")
    chosen = [service for service in built.find("Service")
              if monitor["spec"]["selector"]["matchLabels"].items()
              <= service["metadata"]["labels"].items()]
    assert chosen == [cluster_ip], "one Service scraped: the job label is its name, sightline"
    ports = {port["name"] for port in cluster_ip["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_scaling_differs_by_overlay(builds):
    assert not builds["overlays/dev"].find("HorizontalPodAutoscaler")
    assert not builds["overlays/dev"].find("PodDisruptionBudget")
    assert builds["overlays/dev"].one("Deployment", "sightline")["spec"]["replicas"] == 1
    assert not [obj for obj in builds["overlays/dev"].require()
                if obj["apiVersion"].startswith("monitoring.coreos.com/")], (
        "dev applies to a cluster without the Prometheus Operator's CRDs")
    for fleet in ("overlays/prod", "overlays/canary"):
        built = builds[fleet]
        deployment = built.one("Deployment", "sightline")
        assert "replicas" not in deployment["spec"], "the HPA owns the count; apply would reset it"
        assert built.one("HorizontalPodAutoscaler", "sightline")["spec"]["minReplicas"] >= 3
        selector = built.one("PodDisruptionBudget", "sightline")["spec"]["selector"]
        assert selector["matchLabels"].items() <= deployment["spec"]["template"]["metadata"][
            "labels"].items()


def _adapter_rule() -> dict:
    values = yaml.safe_load((ROOT / "k8s/prometheus-adapter/values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    return rule


def test_the_hpa_metric_is_in_the_contract_and_served_by_the_adapter(builds):
    hpa = builds["overlays/prod"].one("HorizontalPodAutoscaler", "sightline")
    (name,) = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]
               if metric["type"] == "Pods"]
    contract = (ROOT / "monitoring/METRICS.md").read_text()
    assert re.search(rf"`{name}` gauge", contract), f"{name} is not a gauge in METRICS.md"
    rule = _adapter_rule()
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH "
                    "(Debian: apt-get install --no-install-recommends prometheus)")
def test_the_adapter_query_is_promql(tmp_path):
    """The adapter's template with its placeholders filled as the adapter fills them."""
    query = (_adapter_rule()["metricsQuery"].replace("<<.Series>>", "sightline_in_flight_requests")
             .replace("<<.LabelMatchers>>", 'namespace="sightline",pod=~"a|b"')
             .replace("<<.GroupBy>>", "pod"))
    rules = tmp_path / "adapter.yml"
    rules.write_text(yaml.safe_dump(
        {"groups": [{"name": "adapter", "rules": [{"record": "adapter:query", "expr": query}]}]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_canary_runs_one_controller_on_the_servers_experiments(builds):
    built = builds["overlays/canary"]
    experiments = built.one("ConfigMap", "sightline-experiments")["data"]["experiments.yaml"]
    parsed = parse_experiments(yaml.safe_load(experiments))
    assert parsed and all(e.decided_by == "controller" for e in parsed.values())
    assert all(e.config.mode.value == "canary" and e.config.steps for e in parsed.values())
    deployment = built.one("Deployment", "sightline-ab-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "never two deciding at once"
    spec = pod_spec(deployment)
    controller = container(spec, "controller")
    assert controller["command"] == ["sightline-ab"] and controller["args"] == CONTROLLER_ARGS
    mounts = _mounts(spec, controller)
    assert mounts["/etc/sightline/experiments"]["configMap"]["name"] == "sightline-experiments"
    assert mounts["/models"]["persistentVolumeClaim"]["claimName"] == "sightline-models"
    assert not mounts["/models"]["readOnly"], "the controller saves its decisions there"
    server_spec = pod_spec(built.one("Deployment", "sightline"))
    server = container(server_spec, "server")
    assert "--experiments-file=/etc/sightline/experiments/experiments.yaml" in server["args"]
    served = _mounts(server_spec, server)
    assert served["/etc/sightline/experiments"]["configMap"]["name"] == "sightline-experiments"
    assert served["/models"]["readOnly"], "servers adopt the controller's states, never write"
    policy = built.one("NetworkPolicy", "sightline-ab-controller")
    assert [port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]] == [
        9090, 53, 53]


def test_kserve_runs_the_server_with_a_config_it_accepts(builds):
    built = builds["kserve"]
    runtime = built.one("ServingRuntime", "sightline")
    (box,) = runtime["spec"]["containers"]
    assert box["name"] == "kserve-container"
    config = load_config(box["args"], _environ(box))
    assert config.model_repository == "/mnt/models"
    assert box["ports"] == [{"name": "h2c", "containerPort": config.port, "protocol": "TCP"}]
    service = built.one("InferenceService", "shapes")["spec"]["predictor"]["model"]
    assert service["runtime"] == "sightline"
    assert service["protocolVersion"] in runtime["spec"]["protocolVersions"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert service["modelFormat"]["name"] in formats
    assert service["storageUri"] == "pvc://sightline-models"


@pytest.mark.parametrize("script", sorted((ROOT / "k8s/tools").glob("*.sh")),
                         ids=lambda path: path.name)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_pod_gets_the_service_links_the_server_would_read_as_settings(builds):
    """A Service named sightline makes the kubelet set SIGHTLINE_PORT=tcp://<ip>:8500 in every
    pod of the namespace, unless the pod opts out; the server would read it as its port."""
    with pytest.raises(ConfigError, match="port must be int; got 'tcp://10.0.0.7:8500'"):
        load_config([], {"SIGHTLINE_PORT": "tcp://10.0.0.7:8500"})
    pods = [(directory, obj["metadata"]["name"]) for directory, built in builds.items()
            for obj in built.require() if (spec := pod_spec(obj)) is not None
            and spec.get("enableServiceLinks") is not False]
    assert pods == []
