"""The fleet on loopback: several real Sightline server processes (``python -m serving``), each on
its own loopback address (127.0.0.2, 127.0.0.3, ...; Linux routes all of 127/8 to ``lo``), all
serving one shared model repository, as the pods behind a Kubernetes Service would.

The ``fleet`` fixture starts them, waits until each one's health says SERVING and stops them all
at teardown (SIGTERM, then SIGKILL after a timeout). Each server's stdout and stderr go to a file
under ``tmp_path``; when a test fails, the tail of every log is printed with its report. Tests
count where requests went from each server's own metrics (``grpc_server_handled_total``), the
numbers an operator would read, so a client's view and the servers' views can be compared.

Reuse: ``fleet.start(count, args=..., env=..., args_for=..., env_for=...)`` takes extra flags and
environment for every server or per server (e.g. an experiments file), and each ``FleetServer``
exposes its address, metrics URL and pid, and can be sent SIGTERM, waited for, or restarted on the
same address and ports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from serving.repository.publish import deploy
from tests.conftest import ROOT

FLEET_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CLASSIFIER_SERVICE = "sightline.classifier.v1.ImageClassifier"
HEALTH_SERVICE = ""  # the server as a whole
# What every fleet server gets unless a test's own args override it (argparse: the last wins).
# One process and one interpreter thread each, as one pod of a fleet: three servers share
# this machine's two cores (test_processes.py asks for more).
DEFAULT_ARGS = ("--processes", "1", "--workers", "1", "--poll-seconds", "0.5",
                "--drain-seconds", "1", "--grace-seconds", "5")
START_TIMEOUT = 90.0  # three processes importing LiteRT and warming a model on two busy cores
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 40

_REPORTS = pytest.StashKey[dict]()


def free_port_on_all(hosts: Sequence[str]) -> int:
    """A TCP port that is free on every one of ``hosts`` right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        with ExitStack() as held:
            try:
                for host in hosts:
                    sock = held.enter_context(socket.socket())
                    sock.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def service_config(policy: str = "pick_first", *, health_check: bool = False,
                   retry_unavailable: bool = False) -> str:
    """A gRPC service config (JSON) for the channel option ``grpc.service_config``.

    ``health_check``: the channel watches grpc.health.v1 (service "") on each backend and picks
    only those that say SERVING, so a draining server leaves the pick as soon as it turns
    NOT_SERVING. ``retry_unavailable``: calls that end UNAVAILABLE are retried (up to 4 tries)."""
    config: dict = {"loadBalancingConfig": [{policy: {}}]}
    if health_check:
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE}
    if retry_unavailable:
        config["methodConfig"] = [{
            "name": [{"service": CLASSIFIER_SERVICE}],
            "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
    return json.dumps(config)


def metric_samples(text: str) -> dict[tuple, float]:
    """Prometheus text -> {(sample name, sorted label items): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class FleetServer:
    """One server process of the fleet, on its own address and ports, kept across restarts."""

    name: str
    host: str
    port: int
    metrics_port: int
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)  # of every process that has ended

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        return self.process.pid

    def launch(self) -> None:
        """Start a process (the first, or a replacement once the last has ended)."""
        assert self.process is None or self.process.poll() is not None, "still running"
        self.starts += 1
        with open(self.log_path, "a") as log:  # a file: a pipe nobody reads could fill, block
            log.write(f"--- {self.name}: start #{self.starts} on {self.address}\n")
            log.flush()
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> float:
        """Block until health (service "") says SERVING; returns the seconds waited."""
        began = time.monotonic()
        end = began + timeout
        seen = "nothing yet"
        with grpc.insecure_channel(self.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while time.monotonic() < end:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode} "
                                       f"before SERVING:\n{self.log_tail()}")
                try:
                    status = check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE),
                                   timeout=1.0).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return time.monotonic() - began
                    seen = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
                except grpc.RpcError as exc:
                    seen = exc.code().name
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not SERVING within {timeout:g}s (last: {seen}):\n"
                           f"{self.log_tail()}")

    def send_sigterm(self) -> None:
        """Begin the graceful shutdown (docs/shutdown.md) without waiting for it."""
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status, once the process has ended; SIGKILL (and -9) after ``timeout``."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.exit_codes.append(code)
        return code

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit (SIGKILL after ``timeout``); the exit status."""
        if self.process.poll() is None:
            self.send_sigterm()
        return self.wait_exit(timeout)

    def restart(self, timeout: float = START_TIMEOUT) -> int:
        """Replace the process on the same address and ports, as a rollout replaces a pod;
        returns the old one's exit status once the new one is SERVING."""
        code = self.terminate()
        self.launch()
        self.wait_serving(timeout)
        return code

    def scrape(self) -> dict[tuple, float]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return metric_samples(response.read().decode())

    def handled(self, method: str = "Classify", code: str = "OK") -> float:
        """Calls of the classifier's ``method`` this process has answered with ``code``."""
        labels = {"grpc_type": "unary", "grpc_service": CLASSIFIER_SERVICE,
                  "grpc_method": method, "grpc_code": code}
        return self.scrape().get(("grpc_server_handled_total", tuple(sorted(labels.items()))),
                                 0.0)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class Fleet:
    """Servers started by one test; ``stop_all`` ends every process that is still running."""

    def __init__(self, workdir: Path, repository: Path):
        self.workdir = workdir
        self.repository = repository
        self.servers: list[FleetServer] = []

    def start(self, count: int = 3, *, hosts: Sequence[str] = FLEET_HOSTS,
              port: int | None = None, args: Sequence[str] = (),
              env: Mapping[str, str] | None = None,
              args_for: Callable[[int], Sequence[str]] | None = None,
              env_for: Callable[[int], Mapping[str, str]] | None = None,
              wait: bool = True, timeout: float = START_TIMEOUT) -> list[FleetServer]:
        """Start ``count`` servers on ``hosts[:count]``, all on one gRPC port (``port``, else a
        free one), each with a metrics port of its own; wait until all are SERVING.

        ``args``/``env`` go to every server, ``args_for(i)``/``env_for(i)`` to server i, after
        DEFAULT_ARGS, so they override them."""
        if count > len(hosts):
            raise ValueError(f"{count} servers need {count} hosts; got {list(hosts)}")
        hosts = list(hosts[:count])
        port = port or free_port_on_all(hosts)
        started = []
        for index, host in enumerate(hosts):
            metrics_port = free_port_on_all([host])
            command = [sys.executable, "-m", "serving", "--model-repository",
                       str(self.repository), "--host", host, "--port", str(port),
                       "--metrics-port", str(metrics_port), *DEFAULT_ARGS, *args,
                       *(args_for(index) if args_for else ())]
            server_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {}),
                          **(env_for(index) if env_for else {})}
            name = f"server-{len(self.servers)}"
            server = FleetServer(name, host, port, metrics_port, command, server_env,
                                 self.workdir / f"{name}.log")
            self.servers.append(server)
            server.launch()
            started.append(server)
        if wait:
            for server in started:  # they start in parallel; waiting in turn costs nothing
                server.wait_serving(timeout)
        return started

    def target(self, servers: Sequence[FleetServer] | None = None) -> str:
        """gRPC's static address list of ``servers`` (default all): what a headless Service's
        DNS answer of several A records resolves to."""
        servers = self.servers if servers is None else servers
        return "ipv4:" + ",".join(server.address for server in servers)

    def handled(self, method: str = "Classify", code: str = "OK") -> list[float]:
        """Each server's count of ``method`` calls answered with ``code``, in server order."""
        return [server.handled(method, code) for server in self.servers]

    def handled_since(self, before: Sequence[float], total: int, method: str = "Classify",
                      code: str = "OK", timeout: float = 5.0) -> list[int]:
        """Each server's calls since ``before`` (a ``handled()``), once they add up to
        ``total`` or after ``timeout``: a server counts a call just after its client has the
        answer, so a scrape at once may miss the last few."""
        end = time.monotonic() + timeout
        while True:
            counts = [int(now - then) for now, then in zip(self.handled(method, code), before,
                                                           strict=True)]
            if sum(counts) >= total or time.monotonic() > end:
                return counts
            time.sleep(0.1)

    def stop_all(self, timeout: float = STOP_TIMEOUT) -> dict[str, int]:
        """SIGTERM every running process at once, then wait (SIGKILL after ``timeout``)."""
        running = [s for s in self.servers if s.process and s.process.poll() is None]
        for server in running:
            server.send_sigterm()
        return {server.name: server.wait_exit(timeout) for server in running}

    def log_tails(self) -> str:
        return "\n".join(f"===== {s.name} ({s.address}, {s.log_path}) =====\n{s.log_tail()}"
                         for s in self.servers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so the fleet fixture knows about failures."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def fleet_repository(deployable, tmp_path) -> Path:
    """models/gap/1/: the session's small int8 GAP-head model, shared by the fleet's servers."""
    models = tmp_path / "models"
    deploy(deployable("gap"), models)
    return models


@pytest.fixture
def fleet(fleet_repository, tmp_path, request):
    """A ``Fleet`` on the shared repository; start servers with ``fleet.start(...)``."""
    for host in FLEET_HOSTS:
        with socket.socket() as probe:
            try:
                probe.bind((host, 0))
            except OSError as exc:  # macOS: only 127.0.0.1 exists unless aliases are added
                pytest.skip(f"cannot bind {host} ({exc}); Linux routes all of 127/8 to lo")
    servers = Fleet(tmp_path, fleet_repository)
    try:
        yield servers
    finally:
        codes = servers.stop_all()
        reports = request.node.stash.get(_REPORTS, {})
        if any(report.failed for report in reports.values()):
            print(f"exit codes at teardown: {codes}\n{servers.log_tails()}")
