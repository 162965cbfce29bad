"""The pod's security context, proven on this machine: ``python -m serving`` runs as the
serving image's USER (uid 10001) with no capabilities, no new privileges, no home and
PYTHONDONTWRITEBYTECODE, over a copy of the code and a model repository it cannot write; and
again on a read-only root filesystem (a private mount namespace), as readOnlyRootFilesystem
gives. Each time it reports SERVING, classifies with a heatmap, serves /metrics, drains on
SIGTERM and exits 0 within its grace, and leaves the code and the repository untouched."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from monitoring.local_prometheus import free_port
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc
from serving.repository.publish import deploy
from tests.docker.dockerfile import ROOT, SERVING, stages
from tests.serving.conftest import classify_request

UID, GID = (int(n) for n in stages(SERVING)[-1].last("USER").arguments.split(":"))
SERVE_PYTHON = ROOT / ".venv-serve" / "bin" / "python"
NO_HOME = "/nonexistent"
DRAIN, GRACE = 1.0, 5.0
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": NO_HOME, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
DROP_PRIVILEGES = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                   "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
READ_ONLY_ROOT = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  'mount -o remount,ro,bind / / && exec "$@"', "sh"]
REFUSED_WRITES = ("Permission denied", "Read-only file system", "Traceback")

pytestmark = [
    pytest.mark.skipif(not SERVE_PYTHON.exists(), reason="no .venv-serve: `make test` builds it"),
    pytest.mark.skipif(os.geteuid() != 0, reason=f"switching to uid {UID} needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]


def mount_namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run([*READ_ONLY_ROOT, "true"], capture_output=True).returncode == 0


def command(argv: list[str], read_only_root: bool) -> list[str]:
    return [*(READ_ONLY_ROOT if read_only_root else []), *DROP_PRIVILEGES, *argv]


def readable_by_all(root: Path) -> Path:
    """Root's, directories 0755 and files 0644: any user reads, only root writes."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, 0, 0)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    return {p.relative_to(root).as_posix(): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns,
                                             p.stat().st_mode, p.stat().st_uid)
            for p in [root, *root.rglob("*")]}


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys()
                  if before.get(path) != after.get(path))


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


@pytest.fixture
def shared_dir():
    """A directory every user can traverse (pytest's tmp_path sits under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sightline-unprivileged-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def read_only_install(shared_dir, deployable):
    """(code, models): a copy of serving/ and a one-model repository, neither writable by UID."""
    code = shared_dir / "code"
    shutil.copytree(ROOT / "serving", code / "serving",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    deploy(deployable("gap"), shared_dir / "models")
    return readable_by_all(code), readable_by_all(shared_dir / "models")


def wait_until_serving(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"not SERVING within 90 s:\n{log.read_text()[-3000:]}")


def seen_not_serving_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while time.monotonic() < deadline:
            try:
                if check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.NOT_SERVING:
                    return True
            except grpc.RpcError:
                return False
            time.sleep(0.05)
    return False


@pytest.mark.parametrize("read_only_root", [False, True], ids=["uid", "uid-read-only-root"])
def test_the_server_runs_unprivileged_and_writes_nothing(read_only_install, shared_dir,
                                                         read_only_root):
    if read_only_root and not mount_namespaces_work():
        pytest.skip("no mount namespace here (needs CAP_SYS_ADMIN) to make / read-only")
    code, models = read_only_install
    before = snapshot(code), snapshot(models)
    assert not Path(NO_HOME).exists()

    probe = subprocess.run(
        command([str(SERVE_PYTHON), "-c", "import serving; print(serving.__file__)"],
                read_only_root), cwd=code, env=ENVIRONMENT, capture_output=True, text=True,
        timeout=60)
    assert probe.returncode == 0, (
        f"uid {UID} cannot run {SERVE_PYTHON}; its base interpreter (pyvenv.cfg `home`) must "
        f"be readable by every user:\n{probe.stderr}")
    assert Path(probe.stdout.strip()) == code / "serving" / "__init__.py"

    port, metrics_port = free_port(), free_port()
    log = shared_dir / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command([str(SERVE_PYTHON), "-m", "serving", "--model-repository", str(models),
                     "--host", "127.0.0.1", "--port", str(port), "--metrics-host", "127.0.0.1",
                     "--metrics-port", str(metrics_port), "--workers", "1",
                     "--drain-seconds", str(DRAIN), "--grace-seconds", str(GRACE)],
                    read_only_root),
            cwd=code, env=ENVIRONMENT, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(port, process, log)
        status = proc_status(process.pid)
        assert status["Uid"].split() == [str(UID)] * 4 and status["Gid"].split() == [str(GID)] * 4
        assert (status["Groups"], status["NoNewPrivs"]) == ("", "1")
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
        root_mount = next(line.split() for line in
                          Path(f"/proc/{process.pid}/mounts").read_text().splitlines()
                          if line.split()[1] == "/")
        assert ("ro" in root_mount[3].split(",")) == read_only_root, root_mount

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = pb_grpc.ImageClassifierStub(channel).Classify(
                classify_request(top_k=3, explain=pb.ExplainRequest(png_overlay=True)),
                timeout=30)
        assert len(response.classes) == 3 and response.heatmap.png.startswith(b"\x89PNG")
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as scraped:
            assert b"sightline_model_load_duration_seconds" in scraped.read()

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert seen_not_serving_within(port, DRAIN)
        assert process.wait(timeout=DRAIN + GRACE + 10) == 0, log.read_text()[-3000:]
        assert time.monotonic() - signalled < DRAIN + GRACE
    finally:
        process.kill()
        process.wait()
    text = log.read_text()
    assert f"serving on for {DRAIN:g}s" in text and "stopped" in text, text[-3000:]
    assert not [phrase for phrase in REFUSED_WRITES if phrase in text], text[-3000:]
    assert changes(before[0], snapshot(code)) == [], "written under the code"
    assert changes(before[1], snapshot(models)) == [], "written under the model repository"
