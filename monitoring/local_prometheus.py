"""A Prometheus (Debian's package) on a free loopback port, for tests and the preview demo.

``start(targets, rule_files, workdir)`` writes a config that scrapes ``targets`` as job
``sightline`` every ``scrape_seconds``, starts ``prometheus`` and returns once it answers
``/-/ready``; ``stop()`` ends it.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml

__all__ = ["LocalPrometheus", "free_port", "start"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPrometheus:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url = url
        self.process = process
        self.log = log

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def start(targets: list[str], rule_files=(), workdir: Path = Path("."), scrape_seconds: float = 1,
          timeout: float = 30) -> LocalPrometheus:
    config = {
        "global": {"scrape_interval": f"{scrape_seconds:g}s",
                   "evaluation_interval": f"{scrape_seconds:g}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "sightline", "static_configs": [{"targets": targets}]}],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port, log = free_port(), workdir / "prometheus.log"
    with open(log, "w") as sink:  # a file, not a pipe nobody reads, which could fill and block
        process = subprocess.Popen(
            ["prometheus", f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=sink)
    prometheus = LocalPrometheus(f"http://127.0.0.1:{port}", process, log)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1):
                return prometheus
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log.read_text()}") from None
            time.sleep(0.2)
    prometheus.stop()
    raise RuntimeError(f"prometheus did not become ready in {timeout:g} s")
