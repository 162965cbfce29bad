"""Several server processes on one port: ``--processes N`` (docs/ARCHITECTURE.md, "Process model").

Why: the sync gRPC server holds the GIL for all but inference, so one process never used more
than about 1.25 cores however many the machine had. N processes each run a whole server (gRPC,
batchers, interpreters, repository poller, health, experiments) and share the port with
SO_REUSEPORT; the kernel spreads connections across them.

How, as grpc's own multiprocessing example: the supervisor holds the port with an SO_REUSEPORT
socket, then forks the workers before any gRPC object exists in it (gRPC's core does not survive
a fork). Each worker builds its server, binds the same port and serves. The supervisor then
- serves the one /metrics, merging every worker's (``observe.merge``): a scrape is the sum of
  what each process did;
- makes one feedback key before the fork, so a label any process signed verifies in all;
- decides the A/B experiments on every process's counts summed (``LocalCounts``), with the
  same ``Controller`` and pure ``decide`` the fleet's controller runs on Prometheus' sums; the
  workers adopt each decision from the state file and never decide by themselves;
- forwards SIGTERM and SIGINT to every worker at once: all turn NOT_SERVING at the same moment
  and drain as one server does (docs/shutdown.md); a second signal cuts the drain short in all;
- when a worker exits on its own, stops the others and exits with its status (1 if it had
  none): a server running short of processes while saying SERVING would hide the failure,
  and the orchestrator restarts the whole.
If the supervisor itself dies, even by SIGKILL (the OOM killer), the kernel sends each worker
SIGTERM (Linux's parent-death signal), and they drain and exit: no orphan keeps the port.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry, ProcessCollector

from serving.api.auth import read_tokens
from serving.card import CardError, ReferenceStats, load_card
from serving.config import ConfigError, ServerConfig
from serving.observe.logs import tag_process
from serving.observe.merge import MergedCollector, merge, with_drift_of_all
from serving.observe.metrics_http import MetricsServer
from serving.repository.loader import LoadError
from serving.routing.controller import Controller
from serving.routing.experiment import ExperimentFile
from serving.routing.feedback import FeedbackKey
from serving.routing.fleet import COUNTERS, LATENCY, fleet_counts
from serving.routing.live import where_experiments_live

__all__ = ["serve_processes"]

log = logging.getLogger("sightline.server")
SCRAPE_TIMEOUT = 5.0  # seconds to read one worker's metrics
SHUTDOWN_SIGNALS = {signal.SIGTERM, signal.SIGINT}
PR_SET_PDEATHSIG = 1  # prctl(2)


def serve_processes(config: ServerConfig, serve_one) -> int:
    """Run ``config.process_count`` workers, each ``serve_one(config, feedback_key,
    on_metrics_port)``, until they end; -> the exit status."""
    count = config.process_count
    reserved = _reserve(config.host, config.port)  # held open: the port stays ours
    key = (FeedbackKey.from_file(config.feedback_key_file) if config.feedback_key_file
           else FeedbackKey.generate())
    # Workers always count (the supervisor decides experiments on their counts), on loopback
    # ports of their own; only the supervisor's endpoint follows metrics_port.
    worker_config = dataclasses.replace(config, metrics_host="127.0.0.1", metrics_port=0)
    workers: dict[int, int] = {}  # pid -> index
    stopping = threading.Event()

    def forward(signum, _frame):  # the main thread only ever waits in os.wait
        stopping.set()
        for pid in list(workers):
            _signal(pid, signum)

    for signum in SHUTDOWN_SIGNALS:  # before the fork: a signal in between is not lost
        signal.signal(signum, forward)
    ports: dict[int, int] = {}  # index -> its metrics port, once it reported it
    read = _reader(config, ports)
    # Before the fork: every experiment's window starts before any worker counts, so the
    # workers' first requests fall inside it, and the workers restore the state saved here.
    controller = _experiments_controller(config, read)
    readers = []
    supervisor = os.getpid()
    for index in range(count):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: nothing of the supervisor's runs here
            os.close(read_end)
            os._exit(_run_worker(worker_config, key, write_end, serve_one, supervisor, index))
        os.close(write_end)
        workers[pid] = index
        readers.append((index, read_end))
    log.info("%d server processes on port %d: %s", count, config.port,
             ", ".join(str(pid) for pid in workers))
    for index, read_end in readers:
        threading.Thread(target=_read_port, args=(index, read_end, ports), daemon=True).start()
    metrics = _merged_metrics(config, read) if config.metrics_port >= 0 else None
    deciding = _decide_in_background(controller, config, stopping)
    if stopping.is_set():  # signalled while forking: the workers forked since missed it
        for pid in workers:
            _signal(pid, signal.SIGTERM)
    status = 0
    while workers:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            break
        code = os.waitstatus_to_exitcode(wait_status)
        index = workers.pop(pid)
        if not stopping.is_set():
            log.error("server process %d (pid %d) exited with %d; stopping the others",
                      index, pid, code)
            stopping.set()
            for other in workers:
                _signal(other, signal.SIGTERM)
            status = code if code > 0 else 1
        elif code != 0:
            status = status or (code if code > 0 else 1)
    if deciding is not None:
        deciding.join(5)
    if metrics is not None:
        metrics.stop()
    reserved.close()
    return status


def _end_with(supervisor: int) -> None:
    """In a worker: SIGTERM when the supervisor dies (Linux; elsewhere nothing is done)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM) == 0 and os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the prctl took effect


def _run_worker(config: ServerConfig, key: FeedbackKey, write_end: int, serve_one,
                supervisor: int, index: int) -> int:
    for signum in SHUTDOWN_SIGNALS:  # not the supervisor's forwarding; serve_one sets its own
        signal.signal(signum, signal.SIG_DFL)
    _end_with(supervisor)
    tag_process(index)

    def on_metrics_port(port: int) -> None:
        os.write(write_end, f"{port}\n".encode())
        os.close(write_end)

    try:
        serve_one(config, key, on_metrics_port)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except (ConfigError, LoadError, OSError) as exc:  # as one server says it (exit 2)
        log.error("cannot serve: %s", exc)
        return 2
    except BaseException:
        log.exception("server process failed")
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _read_port(index: int, read_end: int, ports: dict[int, int]) -> None:
    with os.fdopen(read_end) as pipe:
        line = pipe.readline().strip()
    if line:
        ports[index] = int(line)


def _reader(config: ServerConfig, ports: dict[int, int]):
    """-> ``read()``: [(process index, its exposition), ...] of the workers that answer."""
    tokens = _metrics_tokens(config)
    headers = {"Authorization": f"Bearer {tokens[0].decode()}"} if tokens else {}

    def read() -> list[tuple[str, str]]:
        found = []
        for index, port in sorted(ports.items()):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=SCRAPE_TIMEOUT) as response:
                    found.append((str(index), response.read().decode()))
            except OSError as exc:  # stopping, or not listening yet: the others still count
                log.warning("metrics of server process %d unread: %s", index, exc)
        return found

    return read


def _metrics_tokens(config: ServerConfig) -> list[bytes] | None:
    return (read_tokens(config.auth_token_file)
            if config.auth_token_file and config.metrics_auth else None)


def _merged_metrics(config: ServerConfig, read) -> MetricsServer:
    tokens = _metrics_tokens(config)
    references = _References(config)
    registry = CollectorRegistry()
    registry.register(MergedCollector(read, lambda families: with_drift_of_all(
        families, references, config.drift_min_samples)))
    supervisor = CollectorRegistry()
    ProcessCollector(registry=supervisor)
    registry.register(_Labelled(supervisor, "supervisor"))
    server = MetricsServer(config.metrics_address, config.metrics_port, registry, tokens=tokens)
    server.start()
    log.info("metrics of all %d processes on http://%s:%d/metrics", config.process_count,
             config.metrics_address, server.port)
    return server


class _References:
    """(model, version) -> the card's reference statistics, read once per version."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._found: dict[tuple[str, str], ReferenceStats | None] = {}

    def __call__(self, model: str, version: str) -> ReferenceStats | None:
        if (model, version) not in self._found:
            directory = (Path(self.config.model_dir) if self.config.model_dir
                         else Path(self.config.model_repository) / model / version)
            try:
                self._found[model, version] = load_card(directory).reference
            except (OSError, CardError) as exc:  # the processes' own figures stand
                log.warning("no drift reference for %s version %s: %s", model, version, exc)
                self._found[model, version] = None
        return self._found[model, version]


def _experiments_controller(config: ServerConfig, read) -> Controller | None:
    """The controller of the experiments that servers decide, judged on all the processes'
    counts (None without experiments), after its first look."""
    path, store = where_experiments_live(config)
    if path is None or store is None:
        return None
    controller = Controller(ExperimentFile(path), store, LocalCounts(read), decides="server")
    controller.tick()
    return controller


def _decide_in_background(controller: Controller | None, config: ServerConfig,
                          stopping: threading.Event) -> threading.Thread | None:
    """The decision thread: the controller looks again every ``decide_seconds``."""
    if controller is None:
        return None

    def run():
        while not stopping.wait(config.decide_seconds):
            controller.tick()

    thread = threading.Thread(target=run, name="experiments", daemon=True)
    thread.start()
    return thread


class LocalCounts:
    """``Controller`` counts from the workers' own totals: each experiment's counters now,
    less what they were when its window began, in the answer shape ``fleet_counts`` reads.
    The first look comes before the workers are forked, so a window open then (a new
    experiment's, or one restored from disk) counts all of their traffic. A window that began
    later, before this object saw it (saved by a worker for an operator's action, or a new
    experiment a worker read from the file first), begins at the next look, so it judges only
    what it has seen from start to end: at most one decide interval of traffic is left out."""

    def __init__(self, read):
        self.read = read
        self._marks: dict[str, tuple[float, dict]] = {}  # name -> (window start, totals)

    def __call__(self, experiment, since: float, now: float):
        totals = _ab_totals(merge(self.read()), experiment.name)
        mark = self._marks.get(experiment.name)
        if mark is None or mark[0] != since:
            self._marks[experiment.name] = mark = (since, totals)
        return fleet_counts(_as_answers({key: value - mark[1].get(key, 0.0)
                                         for key, value in totals.items()}))


def _ab_totals(families, name: str) -> dict[tuple[str, str, str], float]:
    """{(what, variant, le): total} of one experiment's sightline_ab_* series."""
    totals = {}
    for family in families:
        for sample in family.samples:
            what = _AB_SAMPLES.get(sample.name)
            if what is not None and sample.labels.get("experiment") == name:
                key = (what, sample.labels.get("variant", ""), sample.labels.get("le", ""))
                totals[key] = sample.value
    return totals


_AB_SAMPLES = {**{f"sightline_ab_{what}_total": what for what in COUNTERS},
               "sightline_ab_latency_seconds_bucket": LATENCY}


def _as_answers(deltas: dict[tuple[str, str, str], float]) -> dict[str, list[dict]]:
    answers: dict[str, list[dict]] = {}
    for (what, variant, le), value in deltas.items():
        labels = {"variant": variant, **({"le": le} if le else {})}
        answers.setdefault(what, []).append({"metric": labels, "value": [0, str(value)]})
    return answers


class _Labelled:
    """The supervisor's own process metrics, with ``process="supervisor"``."""

    def __init__(self, registry: CollectorRegistry, process: str):
        self.registry = registry
        self.process = process

    def collect(self):
        for family in self.registry.collect():
            family.samples = [sample._replace(labels={**sample.labels, "process": self.process})
                              for sample in family.samples]
            yield family


def _reserve(host: str, port: int) -> socket.socket:
    """A socket bound to the port with SO_REUSEPORT, not listening: the workers bind it too,
    and another program cannot take it while the server runs. First a bind without
    SO_REUSEPORT: the kernel lets any process of the same user join a port whose sockets all
    set it, so a second server started on a taken port would quietly take half its calls."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = (host.strip("[]"), port)
    for reuse in (0, 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, reuse)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port} (in use?): {exc}") from None
        if not reuse:
            sock.close()
    return sock


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass

