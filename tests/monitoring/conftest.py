"""A real Prometheus (Debian's package) on a free loopback port, scraping what a test names."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "rules"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "sightline",
                                "static_configs": [{"targets": targets}]}],
        }
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started.append(process)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1):
                    return prometheus
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(f"prometheus exited: {process.stderr.read()}") from None
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready in 30 s")

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)
