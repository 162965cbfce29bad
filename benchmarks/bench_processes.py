"""One server process against several (``--processes``), side by side in one run.

    .venv/bin/python benchmarks/bench_processes.py --model ARTIFACT [--processes 1 2] [--rounds 3]

Each round starts the server once per process count (the order alternates between rounds, so
a machine that drifts hurts both alike) and measures, with bench_server's load generator and
cells: unary and stream classify at ``--concurrency`` (split over ``--clients`` processes of
``--connections`` connections each: SO_REUSEPORT shares out connections, not calls), unary at
concurrency 1 for latency, and ClassifyBatch calls of 32 images, 4 in flight. Per cell:
throughput (images/s), p50/p99 (per call), the server's CPU (supervisor and workers) per image,
and the cores the whole machine kept busy. Memory at the end of each run: RSS of each process,
and PSS (pages shared between the forked processes counted once, in shares) summed: the honest
total. Printed: median [min-max] over rounds per process count, the ratio of medians against
the first count, and the CPU efficiency of 32-image requests: the raw interpreter's CPU per
image at batch 32 (one thread, in this process) over the server's.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import (  # noqa: E402
    MODEL_FILE,
    ROOT,
    Cell,
    LoadGen,
    ServerProcess,
    children,
    measure_raw,
    model_inputs,
    run_cell,
    serialized_requests,
    status_kb,
)
from loadgen import BATCH_SIZE  # noqa: E402

BATCH_CALLS = 4  # ClassifyBatch calls of 32 images in flight: 128 images, as c=64 twice over
FIGURES = ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_us_per_request",
           "machine_busy_cores")


def memory_mb(pid: int) -> dict:
    pids = [pid, *children(pid)]
    rss = [status_kb(p, "VmRSS") / 1024 for p in pids]
    pss = []
    for p in pids:
        with open(f"/proc/{p}/smaps_rollup") as f:
            pss += [int(line.split()[1]) / 1024 for line in f if line.startswith("Pss:")]
    return {"rss_per_process_mb": rss, "rss_sum_mb": sum(rss), "pss_total_mb": sum(pss)}


def run_once(processes: int, args, requests_file: Path, bar) -> dict:
    command = [sys.executable, "-m", "serving", "--model-dir", str(args.model), "--host",
               "127.0.0.1", "--drain-seconds", "0", "--metrics-port", "0",
               "--processes", str(processes)]
    server = ServerProcess(command, args.out / f"server-p{processes}.log", health=True)
    clients = [LoadGen(server.address, "sightline", requests_file,
                       args.out / f"loadgen-p{processes}-{i}.log", connections=args.connections)
               for i in range(args.clients)]
    cells = [Cell("model", "unary", False, args.concurrency),
             Cell("model", "stream", False, args.concurrency), Cell("model", "unary", False, 1),
             Cell("model", "batch", False, BATCH_CALLS)]
    found = {}
    try:
        for cell in cells:
            bar.set_postfix_str(f"p={processes} {cell.mode} c={cell.concurrency}")
            result = run_cell(cell, server, clients, args.warmup, args.seconds)
            found[f"{cell.mode} c={cell.concurrency}"] = {k: result[k] for k in
                                                          (*FIGURES, "errors")}
            bar.update()
        found["memory"] = memory_mb(server.proc.pid)
    finally:
        for client in clients:
            client.close()
        server.stop()
    return found


def spread(values: list[float]) -> str:
    return (f"{statistics.median(values):.4g} [{min(values):.4g}-{max(values):.4g}]"
            if values else "-")


def report(runs: dict[int, list[dict]]) -> str:
    counts = sorted(runs)
    first = counts[0]
    lines = [f"| cell | figure | {' | '.join(f'{n} process(es)' for n in counts)} | "
             f"{' | '.join(f'{n} / {first}' for n in counts[1:])} |",
             "|---|---|" + "---|" * (2 * len(counts) - 1)]
    for cell in (k for k in runs[first][0] if k != "memory"):
        for figure in FIGURES:
            values = {n: [run[cell][figure] for run in runs[n]] for n in counts}
            ratios = [statistics.median(values[n]) / statistics.median(values[first])
                      for n in counts[1:]]
            lines.append(f"| {cell} | {figure} | "
                         + " | ".join(spread(values[n]) for n in counts) + " | "
                         + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    for figure in ("rss_sum_mb", "pss_total_mb"):
        values = {n: [run["memory"][figure] for run in runs[n]] for n in counts}
        lines.append(f"| memory | {figure} | " + " | ".join(spread(values[n]) for n in counts)
                     + " | " + " | ".join(
                         f"{statistics.median(values[n]) / statistics.median(values[first]):.2f}"
                         for n in counts[1:]) + " |")
    return "\n".join(lines)


def plot(runs: dict[int, list[dict]], path: Path) -> None:
    """Throughput, busy cores and CPU per request for each cell, bars per process count, the
    whiskers the rounds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(runs)
    cells = [k for k in runs[counts[0]][0] if k != "memory"]
    figures = (("requests_per_s", "requests / s"), ("machine_busy_cores", "busy cores (of 2)"),
               ("server_cpu_us_per_request", "server CPU µs / request"))
    fig, axes = plt.subplots(1, len(figures), figsize=(15, 4.2))
    width = 0.8 / len(counts)
    for ax, (figure, title) in zip(axes, figures, strict=True):
        for offset, count in enumerate(counts):
            values = [[run[cell][figure] for run in runs[count]] for cell in cells]
            medians = [statistics.median(v) for v in values]
            errors = [[m - min(v) for m, v in zip(medians, values, strict=True)],
                      [max(v) - m for m, v in zip(medians, values, strict=True)]]
            ax.bar([i + offset * width for i in range(len(cells))], medians, width,
                   yerr=errors, capsize=3, label=f"{count} process{'es' if count > 1 else ''}")
        ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(cells))], cells)
        ax.set_title(title)
        ax.legend()
    fig.suptitle("sightline-serve --processes, side by side (median of rounds, range)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a quantized artifact")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench-processes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        requests_file = Path(workdir) / "requests.pickle"
        requests_file.write_bytes(pickle.dumps(serialized_requests(
            model_inputs(args.model, "PNG")[0])))
        runs: dict[int, list[dict]] = {n: [] for n in args.processes}
        pixels = model_inputs(args.model, "PNG")[1]
        raw = measure_raw(args.model / MODEL_FILE, pixels, [1, BATCH_SIZE], rounds=20)
        with tqdm(total=4 * args.rounds * len(args.processes), unit="cell") as bar:
            for round_index in range(args.rounds):
                order = args.processes if round_index % 2 == 0 else args.processes[::-1]
                for processes in order:
                    runs[processes].append(run_once(processes, args, requests_file, bar))
    (args.out / "report.json").write_text(json.dumps({"raw": raw, "runs": runs}, indent=2))
    plot(runs, args.out / "bench-processes.png")
    print(report(runs))
    raw_us = raw["cpu_per_image_us"][raw["sizes"].index(BATCH_SIZE)]
    for count in sorted(runs):
        served = [run[f"batch c={BATCH_CALLS}"]["server_cpu_us_per_request"]
                  for run in runs[count]]
        print(f"CPU efficiency, {BATCH_SIZE}-image ClassifyBatch, {count} process(es): raw "
              f"{raw_us:.1f} us/image at batch {BATCH_SIZE} / server "
              f"{spread(served)} us/image = {spread([raw_us / s for s in served])}")
    print(f"\n{args.out / 'report.json'}, {args.out / 'bench-processes.png'}")


if __name__ == "__main__":
    main()
