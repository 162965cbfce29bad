"""What Prometheus metrics cost the server: throughput and server CPU per request with metrics on
and off, side by side, in interleaved rounds (target: <= 3% throughput loss at concurrency 16).

    .venv/bin/python benchmarks/bench_metrics.py --model ARTIFACT [--quick]

Setup. Two servers run at once, the same model and flags, as ``python -m serving`` processes:
"on" with ``--metrics-port 0`` (metrics on, an ephemeral port: the gRPC metrics interceptor, the
per-request observer and the HTTP endpoint) and "off" with ``--metrics-port -1`` (none of the
three; checked: the "off" server listens on its gRPC port only). Each has its own ``loadgen.py``
clients (``--clients``, default 2; the same generator as ``bench_server.py``, whose helpers this
reuses), and only one server is loaded at a time: while one is measured the other idles.

Rounds. A warm-up round (not recorded), then ``--rounds`` rounds; each round measures unary
then streaming classify at ``--concurrency``, both servers back to back per mode, in ABBA
order (even rounds: unary on, off; stream off, on; odd rounds the mirror image), so drift and
the machine's noise hit both alike. Every cell is ``--warmup`` s of load, then ``--seconds`` s
measured (``bench_server.run_cell``: requests/s, client latency, server CPU from
/proc/<pid>/stat at the window's two instants, client and whole-machine CPU).

Scraping. While the run lasts, this process (the bench, not a load generator) GETs the "on"
server's ``/metrics`` every ``--scrape-interval`` s (default 2), as Prometheus would; the
cost of those scrapes lands in the "on" server's CPU, inside the measured cells and between
them (reported as the idle server's cores while the other one is loaded).

Reported, per mode: requests/s of every round and their median per server; the throughput
loss = (off - on) / off of the medians, with the min/max of the per-round paired losses; the
server's CPU us/request (median per server), its difference and the loss that difference
implies on a machine the server has to itself (delta / on) and on this one, where the clients
share the cores (delta / (server + client CPU per request)). The requests/s loss is the
direct answer; on a small, shared machine the CPU figure is the steadier one.

Writes ``bench-metrics.json``, ``bench-metrics.png`` (bars: medians; dots: rounds) and the
servers' and clients' logs to ``--out`` (default ``artifacts/bench-metrics``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shlex
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from bench_server import (  # the same helpers, so both benchmarks measure alike
    ROOT,
    Cell,
    LoadGen,
    ServerProcess,
    cpu_seconds,
    git_state,
    model_inputs,
    run_cell,
    serialized_requests,
)

from serving.card import MODEL_FILE

TARGET_LOSS_PERCENT = 3.0
SERVERS = ("on", "off")
MODES = ("unary", "stream")


def listening_ports(pid: int) -> list[int]:
    """TCP ports the process listens on: its socket inodes matched in /proc/<pid>/net/tcp{,6}."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


class Scraper:
    """GETs a /metrics URL on a fixed schedule from a thread of this process, like Prometheus."""

    def __init__(self, url: str, interval: float):
        self.url, self.interval = url, interval
        self.scrapes: list[dict] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due += self.interval
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as reply:
                    body = reply.read()
            except OSError as exc:
                self.errors.append(str(exc))
                continue
            lines = body.decode().splitlines()
            self.scrapes.append({"at": time.monotonic(), "seconds": time.perf_counter() - began,
                                 "bytes": len(body),
                                 "samples": sum(1 for x in lines if x and not x.startswith("#"))})

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        seconds = [s["seconds"] for s in self.scrapes]
        return {"url": self.url, "interval_s": self.interval, "count": len(self.scrapes),
                "errors": len(self.errors), "first_errors": self.errors[:3],
                "median_ms": 1e3 * statistics.median(seconds) if seconds else None,
                "max_ms": 1e3 * max(seconds) if seconds else None,
                "bytes_last": self.scrapes[-1]["bytes"] if self.scrapes else None,
                "samples_last": self.scrapes[-1]["samples"] if self.scrapes else None}


def measure(cell: Cell, server: ServerProcess, idle: ServerProcess, clients: list[LoadGen],
            args) -> dict:
    """One cell on ``server``; also the CPU the ``idle`` server spent meanwhile."""
    t0, idle0 = time.monotonic(), cpu_seconds(idle.proc.pid)
    row = run_cell(cell, server, clients, args.warmup, args.seconds)
    row["idle_server_cores"] = (cpu_seconds(idle.proc.pid) - idle0) / (time.monotonic() - t0)
    return row


def paired_losses(rows: list[dict], mode: str, key: str) -> list[float]:
    """Per round: (off - on) / off * 100 of ``key``."""
    losses = []
    for r in sorted({row["round"] for row in rows}):
        pick = {row["server"]: row[key] for row in rows if row["round"] == r
                and row["mode"] == mode}
        losses.append(100 * (pick["off"] - pick["on"]) / pick["off"])
    return losses


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for mode in MODES:
        def values(server, key, mode=mode):
            return [r[key] for r in rows if r["mode"] == mode and r["server"] == server]

        rps = {s: values(s, "requests_per_s") for s in SERVERS}
        cpu = {s: values(s, "server_cpu_us_per_request") for s in SERVERS}
        client = {s: values(s, "client_cpu_us_per_request") for s in SERVERS}
        med = {s: statistics.median(rps[s]) for s in SERVERS}
        cpu_med = {s: statistics.median(cpu[s]) for s in SERVERS}
        client_med = {s: statistics.median(client[s]) for s in SERVERS}
        losses = paired_losses(rows, mode, "requests_per_s")
        deltas = [on - off for on, off in zip(cpu["on"], cpu["off"], strict=True)]
        delta = cpu_med["on"] - cpu_med["off"]
        loss = 100 * (med["off"] - med["on"]) / med["off"]
        summary[mode] = {
            "requests_per_s": rps, "median_requests_per_s": med,
            "loss_percent": loss, "loss_percent_rounds": losses,
            "loss_percent_min": min(losses), "loss_percent_max": max(losses),
            "loss_percent_median_of_rounds": statistics.median(losses),
            "server_cpu_us_per_request": cpu, "median_server_cpu_us_per_request": cpu_med,
            "median_client_cpu_us_per_request": client_med,
            "metrics_cpu_us_per_request": delta,
            "metrics_cpu_us_per_request_rounds": deltas,
            "metrics_cpu_us_min": min(deltas), "metrics_cpu_us_max": max(deltas),
            # Throughput loss the CPU difference implies: with the cores to itself (the server
            # is CPU-bound), and on this machine, where the load generators share the cores.
            "cpu_implied_loss_percent_dedicated": 100 * delta / cpu_med["on"],
            "cpu_implied_loss_percent_shared": 100 * delta / (cpu_med["on"] + client_med["on"]),
            "median_p50_ms": {s: statistics.median(values(s, "p50_ms")) for s in SERVERS},
            "median_p99_ms": {s: statistics.median(values(s, "p99_ms")) for s in SERVERS},
            "target_loss_percent": TARGET_LOSS_PERCENT, "met": loss <= TARGET_LOSS_PERCENT,
        }
    return summary


def table(rows: list[dict]) -> str:
    header = (f"{'round':>5} {'mode':6} {'metrics':7} {'req/s':>7} {'p50ms':>7} {'p99ms':>7} "
              f"{'batch':>5} {'srvUs/rq':>8} {'srvCor':>6} {'cliUs/rq':>8} {'busyCor':>7} "
              f"{'idleSrvCor':>10} {'err':>3} flags")
    lines = [header, "-" * len(header)]
    for r in rows:
        flags = " ".join(f for f, on in (("CPU-full", r["cpu_full"]),
                                         ("client~1core", r["client_near_one_core"])) if on)
        batch = f"{r['mean_batch']:5.1f}" if r["mean_batch"] else "    -"
        lines.append(
            f"{r['round']:5d} {r['mode']:6} {r['server']:7} {r['requests_per_s']:7.0f} "
            f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {batch} {r['server_cpu_us_per_request']:8.0f} "
            f"{r['server_cores']:6.2f} {r['client_cpu_us_per_request']:8.0f} "
            f"{r['machine_busy_cores']:7.2f} {r['idle_server_cores']:10.3f} {r['errors']:3d} "
            f"{flags}")
    return "\n".join(lines)


def plot(summary: dict, path: Path, concurrency: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    colors = {"on": "C0", "off": "C7"}
    for col, mode in enumerate(MODES):
        s = summary[mode]
        for row, (key, med_key, title) in enumerate((
                ("requests_per_s", "median_requests_per_s",
                 f"{mode} c={concurrency}: req/s (loss {s['loss_percent']:.1f}%, rounds "
                 f"{s['loss_percent_min']:.1f}..{s['loss_percent_max']:.1f}%)"),
                ("server_cpu_us_per_request", "median_server_cpu_us_per_request",
                 f"{mode}: server CPU us/request (metrics "
                 f"{s['metrics_cpu_us_per_request']:+.0f} us)"))):
            ax = axes[row][col]
            for x, server in enumerate(SERVERS):
                ax.bar(x, s[med_key][server], color=colors[server], alpha=0.6, width=0.6)
                dots = s[key][server]
                ax.scatter([x + (i - (len(dots) - 1) / 2) * 0.06 for i in range(len(dots))],
                           dots, color="k", s=12, zorder=3)
            ax.set_xticks(range(len(SERVERS)), [f"metrics {x}" for x in SERVERS])
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle("metrics on vs off: bars = median, dots = rounds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="quantized artifact to serve")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-metrics")
    parser.add_argument("--quick", action="store_true", help="a ~30-second smoke run")
    parser.add_argument("--rounds", type=int, help="recorded rounds (default 6; quick 2)")
    parser.add_argument("--seconds", type=float, help="measured seconds per cell (default 4)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per cell (default 1)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--control", action="store_true",
                        help="A/A: metrics off on both servers, to see the noise floor")
    parser.add_argument("--clients", type=int, default=2, help="load generators per server")
    parser.add_argument("--scrape-interval", type=float, default=2.0)
    parser.add_argument("--format", choices=("PNG", "JPEG"), default="PNG")
    parser.add_argument("--server-args", default="",
                        help="extra `python -m serving` flags for both servers")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 6)
    args.seconds = args.seconds or (1.5 if args.quick else 4.0)
    args.warmup = args.warmup or (0.5 if args.quick else 1.0)
    if not (args.model / MODEL_FILE).is_file():
        parser.error(f"{args.model} has no model.tflite: pass a quantized artifact")
    if "--metrics-port" in args.server_args:
        parser.error("--server-args must not set --metrics-port: it is what is compared")
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    load_before = os.getloadavg()

    images, _ = model_inputs(args.model, args.format)
    base = [sys.executable, "-m", "serving", "--model-dir", str(args.model), "--host",
            "127.0.0.1", "--metrics-host", "127.0.0.1", "--drain-seconds", "0",
            *shlex.split(args.server_args)]
    # --control (A/A): both servers run with metrics off, to measure the comparison's own noise.
    commands = {"on": [*base, "--metrics-port", "-1" if args.control else "0"],
                "off": [*base, "--metrics-port", "-1"]}
    servers: dict[str, ServerProcess] = {}
    clients: dict[str, list[LoadGen]] = {}
    info: dict[str, dict] = {}
    rows: list[dict] = []
    scraper = None
    with tempfile.TemporaryDirectory() as workdir:
        requests_file = Path(workdir) / "requests.pickle"
        requests_file.write_bytes(pickle.dumps(serialized_requests(images)))
        try:
            for name in SERVERS:
                servers[name] = ServerProcess(commands[name], args.out / f"server-{name}.log",
                                              health=True)
                ports = listening_ports(servers[name].proc.pid)
                info[name] = {"command": shlex.join(commands[name]),
                              "cold_start_s": servers[name].cold_start_s,
                              "grpc_port": servers[name].port, "listening_ports": ports}
                clients[name] = [LoadGen(servers[name].address, "sightline", requests_file,
                                         args.out / f"loadgen-{name}-{i}.log")
                                 for i in range(args.clients)]
            metrics_ports = [p for p in info["on"]["listening_ports"]
                             if p != servers["on"].port]
            if args.control:
                metrics_ports = []
            elif len(metrics_ports) != 1:
                raise SystemExit(f"metrics-on server: expected one metrics port besides gRPC, "
                                 f"found {info['on']['listening_ports']}")
            if info["off"]["listening_ports"] != [servers["off"].port]:
                raise SystemExit(f"metrics-off server listens on more than its gRPC port: "
                                 f"{info['off']['listening_ports']}")
            if metrics_ports:
                scraper = Scraper(f"http://127.0.0.1:{metrics_ports[0]}/metrics",
                                  args.scrape_interval)
            for r in range(-1, args.rounds):  # round -1: warm-up, not recorded
                order = SERVERS if r % 2 == 0 else SERVERS[::-1]
                for mode in MODES:
                    for name in (order if mode == MODES[0] else order[::-1]):  # ABBA
                        idle = servers["off" if name == "on" else "on"]
                        cell = Cell("model", mode, False, args.concurrency)
                        row = measure(cell, servers[name], idle, clients[name], args)
                        print(f"round {r:2d} {mode:6} metrics {name:3}: "
                              f"{row['requests_per_s']:6.0f} req/s, "
                              f"{row['server_cpu_us_per_request']:5.0f} server us/request",
                              flush=True)
                        if r >= 0:
                            rows.append({"round": r, "server": name, **row})
        finally:
            scrapes = scraper.stop() if scraper else None
            for name, server in servers.items():
                for client in clients.get(name, []):
                    client.close()
                info[name].update(server.stop())

    summary = summarize(rows)
    report = {
        "out": str(args.out), "model": str(args.model), "quick": args.quick,
        "rounds": args.rounds, "seconds_per_cell": args.seconds, "warmup_per_cell": args.warmup,
        "concurrency": args.concurrency, "clients_per_server": args.clients,
        "git": git_state(), "cpu_count": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(), "runtime_s": time.monotonic() - began,
        "servers": info, "scrapes": scrapes, "summary": summary, "rounds_detail": rows,
    }
    (args.out / "bench-metrics.json").write_text(json.dumps(report, indent=1))
    plot(summary, args.out / "bench-metrics.png", args.concurrency)
    print_report(report)


def print_report(report: dict) -> None:
    print()
    print(table(report["rounds_detail"]))
    print("\nsrvUs/rq, cliUs/rq: CPU-microseconds per request (server; its load generators); "
          "busyCor: whole machine;\nidleSrvCor: the other (unloaded) server's cores meanwhile")
    for name, s in report["servers"].items():
        print(f"server metrics {name}: ready after {s['cold_start_s']:.2f} s, listening on "
              f"{s['listening_ports']} (gRPC {s['grpc_port']}), max RSS "
              f"{s['max_sampled_rss_mb']:.0f} MB")
    sc = report["scrapes"]
    if sc is None:
        print("no scrapes: --control runs both servers with metrics off")
    else:
        print(f"scrapes of {sc['url']} from the bench process every {sc['interval_s']:g} s: "
              f"{sc['count']} ok, {sc['errors']} failed, median {sc['median_ms']:.1f} ms, "
              f"max {sc['max_ms']:.1f} ms, {sc['bytes_last']} bytes / {sc['samples_last']} samples")
    print(f"\nconcurrency {report['concurrency']}, {report['rounds']} rounds x "
          f"{report['seconds_per_cell']:g} s per cell:")
    for mode, s in report["summary"].items():
        med, cpu = s["median_requests_per_s"], s["median_server_cpu_us_per_request"]
        verdict = "met" if s["met"] else "MISSED"
        print(f"  {mode:6} req/s median on {med['on']:.0f} / off {med['off']:.0f}: loss "
              f"{s['loss_percent']:+.1f}% (rounds {s['loss_percent_min']:+.1f}..."
              f"{s['loss_percent_max']:+.1f}%, median {s['loss_percent_median_of_rounds']:+.1f}%)"
              f"  target <= {s['target_loss_percent']:g}% {verdict}")
        print(f"  {'':6} server CPU us/request median on {cpu['on']:.0f} / off {cpu['off']:.0f}: "
              f"metrics {s['metrics_cpu_us_per_request']:+.0f} us (rounds "
              f"{s['metrics_cpu_us_min']:+.0f}...{s['metrics_cpu_us_max']:+.0f}); implied loss "
              f"{s['cpu_implied_loss_percent_dedicated']:.1f}% with the cores to itself, "
              f"{s['cpu_implied_loss_percent_shared']:.1f}% sharing them with the clients")
        print(f"  {'':6} latency p50 on {s['median_p50_ms']['on']:.2f} / off "
              f"{s['median_p50_ms']['off']:.2f} ms, p99 on {s['median_p99_ms']['on']:.2f} / off "
              f"{s['median_p99_ms']['off']:.2f} ms")
    print(f"\nload average before {' '.join(f'{x:.2f}' for x in report['loadavg_before'])}, "
          f"after {' '.join(f'{x:.2f}' for x in report['loadavg_after'])}; runtime "
          f"{report['runtime_s']:.0f} s; wrote bench-metrics.json, bench-metrics.png and logs "
          f"to {report['out']}")


if __name__ == "__main__":
    main()
