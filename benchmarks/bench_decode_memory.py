"""Peak memory of a server flooded with small files that decode big (issue 9's hostile pass).

    python benchmarks/bench_decode_memory.py --model MODEL_DIR [--requests 120] [SERVER FLAGS...]

A 4096 x 4096 palette PNG is 2 KB on the wire and about 50 MB decoded. The bench starts a server
in its own process (extra arguments go to it, e.g. ``--max-concurrent-decodes 64``), sends
``--requests`` of them at once, and prints the statuses, the time, and the server's peak
resident memory (VmHWM) after one request and after the flood.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

import grpc
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitoring.local_prometheus import free_port  # noqa: E402
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb  # noqa: E402
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc  # noqa: E402


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a deployable model directory")
    parser.add_argument("--requests", type=int, default=120)
    args, server_flags = parser.parse_known_args()
    buffer = io.BytesIO()
    Image.new("P", (4096, 4096)).save(buffer, "PNG")
    request = pb.ClassifyRequest(image=buffer.getvalue())
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "serving", "--model-dir", str(args.model), "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", "-1", "--drain-seconds", "0", *server_flags],
        cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ImageClassifierStub(channel)
            stub.Classify(request, timeout=60, wait_for_ready=True)
            one = peak_mb(server.pid)
            started = time.perf_counter()
            calls = [stub.Classify.future(request, timeout=60) for _ in range(args.requests)]
            codes: dict[str, int] = {}
            for call in calls:
                try:
                    call.result()
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1
            seconds = time.perf_counter() - started
        flags = " ".join(server_flags) or "defaults"
        print(f"{len(request.image):,}-byte PNG x {args.requests} at once ({flags}): {codes} in "
              f"{seconds:.1f} s; peak RSS {one:.0f} MB after one, {peak_mb(server.pid):.0f} MB "
              "after all")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
