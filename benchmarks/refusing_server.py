"""A server that answers every Classify RESOURCE_EXHAUSTED at once and does nothing else: the
floor under ``bench_overload.py``'s refusal latency, the cheapest refusal a Python gRPC server
makes with the same clients on the same cores.

    python benchmarks/refusing_server.py PORT
"""

from __future__ import annotations

import sys
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402


class Refusing(pb_grpc.ImageClassifierServicer):
    def Classify(self, request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused: the floor measurement")


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(16))
    pb_grpc.add_ImageClassifierServicer_to_server(Refusing(), server)
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
