"""``sightline-ab``: what each A/B experiment is doing, and the operator's actions.

    sightline-ab status [EXPERIMENT]
    sightline-ab set-weight EXPERIMENT SHARE [--reason TEXT]
    sightline-ab rollback EXPERIMENT [--reason TEXT]
    sightline-ab promote EXPERIMENT [--reason TEXT]
    sightline-ab controller --prometheus URL --definitions FILE --repository DIR

Each of the first four is one call to ``sightline.experiments.v1.Experiments``
(docs/ab-testing.md), with the connection options of ``sightline-classify``. ``controller``
decides the experiments marked ``decided_by: controller`` on the whole fleet's counts in
Prometheus, until stopped (``--once``: one decision each; ``routing.controller``).
Exit status: 0 done, 1 refused by the server, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from pathlib import Path

import grpc

from serving.client import SightlineClient
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as pb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as pb_grpc
from serving.routing.controller import Controller, PrometheusQuery, prometheus_counts
from serving.routing.experiment import ExperimentFile
from serving.routing.live import STATE_DIRECTORY
from serving.routing.state import StateStore

__all__ = ["cli", "main", "render"]


def render(status: pb.ExperimentStatus) -> str:
    """A few lines a person reads: state and reason, then one line per variant."""
    lines = [f"{status.name} ({status.mode} on {status.model}): {status.state}, candidate share "
             f"{status.candidate_share:.4g}" + (f", step {status.step}" if status.mode ==
                                                   "canary" else ""),
             f"  reason: {status.reason or '-'}",
             f"  always-valid p {status.sequential_p_value:.3g}; SRM p {status.srm_p_value:.3g}"]
    for v in (status.baseline, status.candidate):
        spec = f"v{v.version}" if v.version else f"label {v.label}"
        accuracy = ("-" if math.isnan(v.accuracy) else
                    f"{v.accuracy:.4f} [{v.accuracy_low:.4f}, {v.accuracy_high:.4f}]")
        p99 = "-" if math.isnan(v.latency_p99_seconds) else f"{v.latency_p99_seconds * 1e3:.1f} ms"
        lines.append(f"  {v.variant:9} {spec:12} requests {v.requests:,}, errors {v.errors:,}, "
                     f"labels {v.feedback:,}, accuracy {accuracy}, p99 {p99}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sightline-ab", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="localhost:8500", help="host:port of the server")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline, seconds")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--tls-ca", help="CA certificate to verify the server (enables TLS)")
    commands = parser.add_subparsers(dest="command", required=True)
    status = commands.add_parser("status", help="every experiment, or one")
    status.add_argument("experiment", nargs="?", default="")
    weight = commands.add_parser("set-weight", help="set the candidate's share, 0 to 1")
    weight.add_argument("experiment")
    weight.add_argument("share", type=float)
    for name in ("rollback", "promote"):
        command = commands.add_parser(name, help=f"{name} the candidate")
        command.add_argument("experiment")
    for command in (weight, commands.choices["rollback"], commands.choices["promote"]):
        command.add_argument("--reason", default="", help="logged and shown in status")
    controller = commands.add_parser("controller", help="decide fleet-wide from Prometheus")
    controller.add_argument("--prometheus", required=True, help="Prometheus' base URL")
    controller.add_argument("--definitions", required=True, type=Path,
                            help="the experiments file the servers read")
    controller.add_argument("--repository", required=True, type=Path,
                            help="the model repository: states go to its .experiments/")
    controller.add_argument("--interval-seconds", type=float, default=30.0)
    controller.add_argument(
        "--min-window-seconds", type=float, default=150.0,
        help="decide only on counts over at least this long (ten scrapes at 15 s): increase() "
             "over a few scrapes overcounts")
    controller.add_argument("--once", action="store_true", help="one decision, then exit")
    args = parser.parse_args(argv)
    if args.command == "controller":
        return run_controller(args)
    with SightlineClient(args.target, timeout=args.timeout, token=args.token,
                         tls_ca=args.tls_ca) as client:
        stub = pb_grpc.ExperimentsStub(client.channel)
        try:
            if args.command == "status":
                answer = client.call(stub.ABStatus, pb.ABStatusRequest(experiment=args.experiment))
                print("\n".join(render(s) for s in answer.experiments) or "no experiments")
                return 0
            if args.command == "set-weight":
                answer = client.call(stub.SetWeight, pb.SetWeightRequest(
                    experiment=args.experiment, candidate_share=args.share, reason=args.reason))
            else:
                method = stub.Rollback if args.command == "rollback" else stub.Promote
                answer = client.call(method, pb.EndRequest(experiment=args.experiment,
                                                           reason=args.reason))
        except grpc.RpcError as exc:
            print(f"sightline-ab: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        print(render(answer))
    return 0


def run_controller(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.interval_seconds <= 0 or args.min_window_seconds < 0:
        print("sightline-ab: --interval-seconds must be > 0 and --min-window-seconds >= 0",
              file=sys.stderr)
        return 2
    controller = Controller(ExperimentFile(args.definitions),
                            StateStore(args.repository / STATE_DIRECTORY),
                            prometheus_counts(PrometheusQuery(args.prometheus)),
                            min_window_seconds=args.min_window_seconds)
    if args.once:
        controller.tick()
        return 0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        controller.run(args.interval_seconds, stop=stopping.is_set)
    except KeyboardInterrupt:
        pass
    return 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
