"""A 10x burst against a server in its own process: goodput against measured capacity, how fast
refusals come, and how much work is done for clients that left (issue 15's admission targets).

    python benchmarks/bench_overload.py --model MODEL_DIR [--rounds 3] [--heatmap] [--pin]
                                         [-- SERVER_FLAGS]

Each round measures capacity (16 closed-loop clients, a 2 s deadline), then a burst of 160
clients whose deadline is 3x the capacity phase's median latency; refused calls back off
(``burst.BACKOFF_SECONDS``, jittered). Then the same burst goes to ``refusing_server.py``, which
refuses every call at once: the floor the clients and gRPC themselves put under the refusal
latency. The clients run in ``--processes`` processes of their own, on the same cores as the
servers, or (``--pin``) the servers on CPU 0 and the clients on the rest, as clients on other
machines would be. Prints each round and the median and spread of the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import burst  # noqa: E402
from monitoring.local_prometheus import free_port  # noqa: E402
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb  # noqa: E402
from tests.serving.conftest import image_bytes  # noqa: E402

CAPACITY_CLIENTS, BURST_CLIENTS = 16, 160


def late_results(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith("sightline_late_results_total{"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployable model directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--heatmap", action="store_true", help="ask for Grad-CAM heatmaps")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--pin", action="store_true",
                        help="servers on CPU 0, clients on the others (as if on other machines)")
    parser.add_argument("server_flags", nargs="*",
                        help="after --: flags for the server, e.g. -- --admit-wait-share 1")
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("--pin needs 2 CPUs or more: one for the servers, the rest for the clients")
    if args.pin:
        os.sched_setaffinity(0, set(range(1, os.cpu_count())))  # inherited by the clients
    pin = ["taskset", "-c", "0"] if args.pin else []
    port, metrics_port, floor_port = free_port(), free_port(), free_port()
    server = subprocess.Popen(
        [*pin, sys.executable, "-m", "serving", "--model-dir", str(args.model), "--host",
         "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
         "--drain-seconds", "0", *args.server_flags], cwd=ROOT, stderr=subprocess.DEVNULL)
    refusing = subprocess.Popen(
        [*pin, sys.executable, str(ROOT / "benchmarks" / "refusing_server.py"), str(floor_port)])
    target, floor_target = f"127.0.0.1:{port}", f"127.0.0.1:{floor_port}"
    explain = pb.ExplainRequest(png_overlay=True) if args.heatmap else None
    request = pb.ClassifyRequest(image=image_bytes(), explain=explain).SerializeToString()
    ratios, refusal_p99, floor_p99, missed, late_shares = [], [], [], [], []
    try:
        for address in (target, floor_target):
            with grpc.insecure_channel(address) as channel:
                with contextlib.suppress(grpc.RpcError):  # the floor's answer is a refusal
                    channel.unary_unary(burst.CLASSIFY)(request, timeout=60, wait_for_ready=True)
        burst.run(target, CAPACITY_CLIENTS, 1.0, 2.0, request)  # warm-up
        for number in range(1, args.rounds + 1):
            capacity = burst.run_in_processes(target, CAPACITY_CLIENTS, args.seconds, 2.0,
                                              request, processes=args.processes)
            deadline = max(0.05, 3 * capacity.p("OK", 50))
            late_before = late_results(metrics_port)
            burst_phase = burst.run_in_processes(target, BURST_CLIENTS, args.seconds, deadline,
                                                 request, processes=args.processes)
            late = late_results(metrics_port) - late_before
            floor = burst.run_in_processes(floor_target, BURST_CLIENTS, args.seconds, deadline,
                                           request, processes=args.processes)
            ratios.append(burst_phase.goodput / capacity.goodput)
            refusal_p99.append(burst_phase.p("RESOURCE_EXHAUSTED", 99))
            floor_p99.append(floor.p("RESOURCE_EXHAUSTED", 99))
            calls = sum(len(v) for v in burst_phase.latencies.values())
            missed.append(burst_phase.count("DEADLINE_EXCEEDED") / max(1, calls))
            late_shares.append(late / max(1, burst_phase.count("OK")))
            print(f"round {number}: capacity {capacity.summary()}")
            print(f"         burst (deadline {deadline * 1000:.0f} ms) {burst_phase.summary()}; "
                  f"late results {late:.0f}")
            print(f"         the same burst against a server that only refuses: "
                  f"{floor.summary()}")
            time.sleep(0.5)
    finally:
        for process in (server, refusing):
            process.terminate()
            process.wait(30)

    def line(name, values, unit="", scale=1.0, target=""):
        scaled = [v * scale for v in values]
        print(f"{name:<36} median {statistics.median(scaled):8.3f}{unit}  "
              f"range {min(scaled):.3f}-{max(scaled):.3f}{unit}  {target}")

    line("burst goodput / capacity", ratios, target="(target >= 0.9)")
    line("refusal latency p99", refusal_p99, " ms", 1000, "(target <= 5 ms)")
    line("  floor: a server that only refuses", floor_p99, " ms", 1000)
    line("burst calls DEADLINE_EXCEEDED", missed)
    line("late results / OK", late_shares)


if __name__ == "__main__":
    main()
