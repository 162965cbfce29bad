"""What an A/B experiment costs, side by side on one server: split against a single model,
shadow against none at half of capacity, and the router's own CPU per request.

    python benchmarks/bench_ab.py --model ARTIFACT [--rounds 3] [--seconds 3]

The server runs in its own process on a repository holding ``--model`` twice (versions 1 and
2), and its experiments file is rewritten between phases (it reloads live), so every phase of a
round runs on the same process, alternating:
1. throughput of closed-loop clients (``--clients``) with no experiment and with a 50/50 split
   of the two versions: the split's cost is the ratio;
2. p99 latency of paced clients at half of the measured capacity with no experiment and with
   shadow mode (every request copied to the candidate, none explained): the ratio is the cost
   to the primary;
each as four phases, without, with, with, without, so that a drift over the round cancels
(``--control`` runs "with" as without too, which shows the bench's own ratios);
3. in this process, ``Router.route`` plus ``Router.finished`` (assignment, counting, signing),
   in microseconds per request.
Clients run in processes of their own (``burst.run_in_processes``) on the same cores as the
server. Prints each round, then the median and range of each ratio against its target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import burst  # noqa: E402
from monitoring.local_prometheus import free_port  # noqa: E402
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb  # noqa: E402
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as xpb  # noqa: E402
from serving.protos_gen.sightline.experiments.v1 import (  # noqa: E402
    experiments_pb2_grpc as xpb_grpc,
)
from serving.repository.publish import deploy  # noqa: E402
from serving.routing.experiment import parse_experiments  # noqa: E402
from serving.routing.feedback import FeedbackKey, FeedbackKeys  # noqa: E402
from serving.routing.router import Router  # noqa: E402
from tests.serving.conftest import image_bytes  # noqa: E402

SPLIT = {"name": "bench-next", "model": "", "baseline": {"version": 1},
         "candidate": {"version": 2}, "mode": "split",
         "weights": {"baseline": 0.5, "candidate": 0.5}}
SHADOW = {**{k: v for k, v in SPLIT.items() if k != "weights"}, "mode": "shadow",
          "shadow": {"queue_size": 64, "explain_sample": 0.0}}


def set_experiments(repository: Path, experiments: list[dict], model: str,
                    decide_seconds: float) -> None:
    """Rewrite the experiments file atomically and give the server's reload time to see it."""
    staged = repository / ".experiments.yaml.tmp"
    staged.write_text(yaml.safe_dump({"experiments": [{**e, "model": model}
                                                      for e in experiments]}))
    staged.replace(repository / "experiments.yaml")
    time.sleep(max(0.5, 3 * decide_seconds))  # the file is read every decide_seconds


def paced_p99(target: str, rate: float, seconds: float, request: bytes,
              threads: int = 8) -> float:
    """Requests sent at ``rate`` per second in all (an open loop, so latency is not hidden by
    clients waiting for each other); -> p99 latency in seconds."""
    latencies, lock = [], threading.Lock()
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(burst.CLASSIFY)
        interval = threads / rate
        end = time.monotonic() + seconds

        def client(offset: float) -> None:
            due = time.monotonic() + offset
            while due < end:
                time.sleep(max(0.0, due - time.monotonic()))
                sent = time.monotonic()
                call(request, timeout=10)
                with lock:
                    latencies.append(time.monotonic() - sent)
                due += interval

        workers = [threading.Thread(target=client, args=(i * interval / threads,))
                   for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    return float(np.percentile(latencies, 99))


def shadow_counts(target: str) -> tuple[int, int]:
    """(copies mirrored, copies dropped) so far, from ABStatus."""
    with grpc.insecure_channel(target) as channel:
        found = xpb_grpc.ExperimentsStub(channel).ABStatus(xpb.ABStatusRequest(), timeout=10)
    for experiment in found.experiments:
        if experiment.name == SHADOW["name"]:
            return experiment.shadow.mirrored, experiment.shadow.dropped
    return 0, 0


def router_us_per_request(count: int = 50_000) -> float:
    """Route, count and sign, as the data plane does for every routed request."""
    router = Router(FeedbackKeys(FeedbackKey.generate()))
    router.set_experiments(parse_experiments({"experiments": [{**SPLIT, "model": "m"}]}))
    keys = [f"request-{i}" for i in range(count)]
    started = time.perf_counter()
    for key in keys:
        route = router.route("m", key)
        router.finished(route, True, 0.001, 3)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a quantized artifact")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--server-processes", type=int, default=1,
                        help="the server's --processes (more: each connection lands on one of "
                             "them by the kernel's hash, and capacity read 905 or 1,786/s by it)")
    parser.add_argument("--decide-seconds", type=float, default=0.1,
                        help="the server's; the experiments file is reread as often")
    parser.add_argument("--control", action="store_true",
                        help="run no experiment in the split and shadow phases too: the ratios "
                             "are then the bench's own, what it reads for no change")
    parser.add_argument("server_flags", nargs="*", help="after --: more flags for the server")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    repository = work / "models"
    deploy(args.model, repository)
    model = deploy(args.model, repository).parent.name
    set_experiments(repository, [], model, args.decide_seconds)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-repository", str(repository),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
         "--drain-seconds", "0", "--version-policy", "all",
         "--decide-seconds", str(args.decide_seconds),
         "--processes", str(args.server_processes), *args.server_flags],
        cwd=ROOT, stderr=(work / "server.log").open("w"))
    target = f"127.0.0.1:{port}"
    request = pb.ClassifyRequest(image=image_bytes()).SerializeToString()
    split_ratios, shadow_ratios = [], []
    try:
        with grpc.insecure_channel(target) as channel:
            channel.unary_unary(burst.CLASSIFY)(request, timeout=60, wait_for_ready=True)
        burst.run(target, args.clients, 1.0, 5.0, request)  # warm-up
        split_on, shadow_on = ([], []) if args.control else ([SPLIT], [SHADOW])
        copies: list[tuple[int, int]] = []  # (mirrored, dropped) after each treatment

        def abba(control: list[dict], treatment: list[dict], measure) -> tuple[float, float]:
            """Control, treatment, treatment, control: a drift over the round (the second of
            two identical phases read 0.87-0.93 of the first) cancels out of the means."""
            values = []
            for phase, experiments in enumerate((control, treatment, treatment, control)):
                if phase != 2:  # a rewrite of the same file would restart the experiment
                    set_experiments(repository, experiments, model, args.decide_seconds)
                values.append(measure())
                if phase == 2:
                    copies.append(shadow_counts(target))
            return (values[0] + values[3]) / 2, (values[1] + values[2]) / 2

        def throughput() -> float:
            return burst.run_in_processes(target, args.clients, args.seconds, 5.0, request,
                                          processes=args.processes).goodput

        for number in range(1, args.rounds + 1):
            single, split = abba([], split_on, throughput)
            half = single / 2
            alone, shadowed = abba([], shadow_on,
                                   lambda rate=half: paced_p99(target, rate, args.seconds, request))
            mirrored, dropped = copies[-1]
            split_ratios.append(split / single)
            shadow_ratios.append(shadowed / alone)
            print(f"round {number}: single {single:,.0f}/s, split {split:,.0f}/s "
                  f"({split / single:.3f}); at {half:,.0f}/s p99 {alone * 1e3:.2f} ms alone, "
                  f"{shadowed * 1e3:.2f} ms with shadow ({shadowed / alone:.3f}); copies so far "
                  f"{mirrored:,} mirrored, {dropped:,} dropped", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    router_us = [router_us_per_request() for _ in range(5)]

    def line(name, values, target):
        print(f"{name:<40} median {statistics.median(values):8.3f}  "
              f"range {min(values):.3f}-{max(values):.3f}  {target}")

    line("split throughput / single model", split_ratios, "(target >= 0.95)")
    line("shadow p99 / none, at half capacity", shadow_ratios, "(target <= 1.10)")
    line("router us per request (route+count+sign)", router_us, "")
    print(f"server log: {work / 'server.log'}")


if __name__ == "__main__":
    main()
