"""A real Prometheus (Debian's package) on a free loopback port, scraping what a test names."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from monitoring import local_prometheus
from monitoring.local_prometheus import free_port  # noqa: F401 - the tests' one free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "rules"


class Prometheus:
    def __init__(self, url: str, process: subprocess.Popen):
        self.url = url
        self.process = process

    def api(self, path: str, **params) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list:
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} returned nothing within {timeout}s")


@pytest.fixture
def start_prometheus(tmp_path):
    """start_prometheus(targets, rule_files=()) -> Prometheus scraping targets every second."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus missing: `make system-deps` apt-installs it")
    started = []

    def start(targets: list[str], rule_files=()) -> Prometheus:
        local = local_prometheus.start(targets, rule_files, tmp_path / "prometheus")
        started.append(local)
        return Prometheus(local.url, local.process)

    yield start
    for local in started:
        local.stop()
