"""The load generator for ``bench_server.py``: a separate process, so its CPU never counts for
the server's, and the bare-grpcio echo server the benchmark measures gRPC itself with.

    loadgen.py --target HOST:PORT --api sightline|echo --requests FILE   (driven over stdin)
    loadgen.py --serve-echo --port N                                      (the echo server)

Driven mode reads one JSON command per stdin line and answers one JSON line on stdout:

    {"mode": "unary"|"stream"|"batch", "concurrency": n, "heatmap": bool, "start": t0, "stop": t1}
      -> {"samples": [[sent, done, inference_seconds], ...], "completed": n, "errors": n, ...}

``start`` and ``stop`` are ``time.monotonic()`` seconds, a clock every process on the machine
shares, so the bench can read the server's CPU at the same two instants. Load runs from the
moment the command arrives (the time before ``start`` is warm-up) until ``stop``; ``samples``
holds the requests sent at or after ``start`` and answered by ``stop``, ``completed`` every
answer that arrived inside the window (the throughput count).

- unary: ``concurrency`` threads, each making blocking calls back to back on one shared channel;
- stream: one bidi stream holding ``concurrency`` requests in flight; a response frees a slot;
- batch: ``concurrency`` threads of blocking ClassifyBatch calls of 32 images; ``completed``
  counts images, and ``samples`` one (sent, done, inference_seconds) per call.
With ``--connections K`` the concurrency is split over K channels, each its own connection
(K streams in stream mode), as K clients would: a server of several processes shares out
connections, not calls.

Requests are serialized once up front (``FILE``: a pickled {"plain": [bytes], "heatmap":
[bytes]} of ``ClassifyRequest`` messages); a stream's request_id is appended as raw protobuf
bytes (field 5), which merges into the message, so the client spends its CPU on gRPC, not on
building messages. The echo API sends the same bytes and gets 16 bytes back.
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb  # noqa: E402

CLASSIFY = "/sightline.classifier.v1.ImageClassifier/Classify"
CLASSIFY_STREAM = "/sightline.classifier.v1.ImageClassifier/ClassifyStream"
CLASSIFY_BATCH = "/sightline.classifier.v1.ImageClassifier/ClassifyBatch"
BATCH_SIZE = 32  # images per ClassifyBatch call
_BATCH_TAG = b"\x0a"  # field 1 (requests), wire type 2
ECHO_UNARY = "/bench.Echo/Unary"
ECHO_STREAM = "/bench.Echo/Stream"
ECHO_REPLY = b"0123456789abcdef"  # the baseline: a handler returning 16 bytes
TIMEOUT_S = 60.0
_REQUEST_ID_TAG = b"\x2a"  # field 5 (request_id), wire type 2 (length-delimited)


def _with_request_id(message: bytes, request_id: str) -> bytes:
    raw = request_id.encode()
    assert len(raw) < 128, f"request_id {request_id!r} needs a one-byte length"
    return message + _REQUEST_ID_TAG + bytes([len(raw)]) + raw


class _Window:
    """One command's timings: requests sent and answered in [start, stop], answers counted."""

    def __init__(self, start: float, stop: float):
        self.start, self.stop = start, stop
        self.samples: list[tuple[float, float, float]] = []
        self.completed = 0
        self.errors = 0
        self._lock = threading.Lock()

    def record(self, sent: float, done: float, inference_seconds: float, images: int = 1) -> None:
        with self._lock:
            if self.start <= done <= self.stop:
                self.completed += images
                if sent >= self.start:
                    self.samples.append((sent, done, inference_seconds))

    def error(self) -> None:
        with self._lock:
            self.errors += 1


def _inference_seconds(api: str, raw: bytes) -> float:
    if api == "echo":
        return 0.0
    response = pb.ClassifyResponse.FromString(raw)
    if response.HasField("error"):
        raise RuntimeError(f"error response: {response.error.code} {response.error.message}")
    return response.timing.inference_seconds


def run_unary(channel: grpc.Channel, api: str, messages: list[bytes], concurrency: int,
              window: _Window) -> None:
    call = channel.unary_unary(CLASSIFY if api == "sightline" else ECHO_UNARY)

    def worker(offset: int) -> None:
        index = offset
        while True:
            sent = time.monotonic()
            if sent >= window.stop:
                return
            try:
                raw = call(messages[index % len(messages)], timeout=TIMEOUT_S)
                done = time.monotonic()
                window.record(sent, done, _inference_seconds(api, raw))
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                window.error()
                print(f"loadgen: unary call failed: {exc}", file=sys.stderr)
            index += concurrency

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def batch_message(messages: list[bytes]) -> bytes:
    """A serialized ClassifyBatchRequest of serialized ClassifyRequests (field 1, repeated)."""
    return b"".join(_BATCH_TAG + _varint(len(m)) + m for m in messages)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def run_batch(channel: grpc.Channel, messages: list[bytes], concurrency: int, window: _Window,
              size: int = BATCH_SIZE) -> None:
    """``concurrency`` threads of blocking ClassifyBatch calls of ``size`` images each; the
    window counts images, and one latency sample per call."""
    call = channel.unary_unary(CLASSIFY_BATCH)
    batches = [batch_message([messages[(i + j) % len(messages)] for j in range(size)])
               for i in range(0, len(messages), size)]

    def worker(offset: int) -> None:
        index = offset
        while (sent := time.monotonic()) < window.stop:
            try:
                answer = pb.ClassifyBatchResponse.FromString(
                    call(batches[index % len(batches)], timeout=TIMEOUT_S))
                failed = [r for r in answer.responses if r.HasField("error")]
                if failed:
                    raise RuntimeError(f"{len(failed)} errors: {failed[0].error.message}")
                window.record(sent, time.monotonic(), answer.responses[0].timing.inference_seconds,
                              images=size)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never hidden
                window.error()
                print(f"loadgen: batch call failed: {exc}", file=sys.stderr)
            index += concurrency

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_stream(channel: grpc.Channel, api: str, messages: list[bytes], concurrency: int,
               window: _Window) -> None:
    call = channel.stream_stream(CLASSIFY_STREAM if api == "sightline" else ECHO_STREAM)
    slots = threading.Semaphore(concurrency)
    sent_at: dict[str, float] = {}
    in_order: collections.deque[float] = collections.deque()  # echo answers in order, no ids

    def requests():
        index = 0
        while True:
            slots.acquire()
            sent = time.monotonic()
            if sent >= window.stop:
                return  # half-close: the server answers what is in flight, then ends the stream
            message = messages[index % len(messages)]
            if api == "sightline":
                request_id = str(index)
                sent_at[request_id] = sent
                yield _with_request_id(message, request_id)
            else:
                in_order.append(sent)
                yield message
            index += 1

    try:
        for raw in call(requests(), timeout=TIMEOUT_S + window.stop - time.monotonic()):
            done = time.monotonic()
            if api == "sightline":
                response = pb.ClassifyResponse.FromString(raw)
                sent = sent_at.pop(response.request_id)
                if response.HasField("error"):
                    window.error()
                    print(f"loadgen: stream error {response.error.message}", file=sys.stderr)
                else:
                    window.record(sent, done, response.timing.inference_seconds)
            else:
                window.record(in_order.popleft(), done, 0.0)
            slots.release()
    except grpc.RpcError as exc:  # counted and reported; the next command opens a new stream
        window.error()
        print(f"loadgen: stream failed: {exc}", file=sys.stderr)


def run_on_channels(channels: list[grpc.Channel], mode: str, api: str, messages: list[bytes],
                    concurrency: int, window: _Window) -> None:
    """The command's concurrency split over the channels (connections), one thread each."""
    if mode == "batch":
        run = lambda channel, api, messages, share, window: run_batch(  # noqa: E731
            channel, messages, share, window)
    else:
        run = run_unary if mode == "unary" else run_stream
    shares = [concurrency // len(channels) + (i < concurrency % len(channels))
              for i in range(len(channels))]
    threads = [threading.Thread(target=run, args=(channel, api, messages, share, window),
                                daemon=True)
               for channel, share in zip(channels, shares, strict=True) if share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def drive(target: str, api: str, requests_file: Path, connections: int = 1) -> None:
    with open(requests_file, "rb") as f:
        requests = pickle.load(f)  # written by bench_server.py, this machine's own file
    # A local subchannel pool each: channels to one target would otherwise share a connection,
    # and SO_REUSEPORT spreads connections, not calls, over a server's processes.
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(connections)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        window = _Window(command["start"], command["stop"])
        messages = requests["heatmap" if command["heatmap"] else "plain"]
        run_on_channels(channels, command["mode"], api, messages, command["concurrency"],
                        window)
        print(json.dumps({"samples": window.samples, "completed": window.completed,
                          "errors": window.errors}), flush=True)
    for channel in channels:
        channel.close()


def serve_echo(port: int, threads: int) -> None:
    """The bare-grpcio reference: a sync server whose handlers return 16 bytes, nothing else."""

    def unary(_request: bytes, _context) -> bytes:
        return ECHO_REPLY

    def stream(request_iterator, _context):
        for _ in request_iterator:
            yield ECHO_REPLY

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    }),))
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"loadgen: cannot listen on 127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="HOST:PORT of the server to load")
    parser.add_argument("--api", choices=("sightline", "echo"), default="sightline")
    parser.add_argument("--requests", type=Path, help="pickled serialized requests")
    parser.add_argument("--serve-echo", action="store_true", help="run the echo server instead")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=128, help="echo server handler threads")
    parser.add_argument("--connections", type=int, default=1,
                        help="channels, each its own connection, sharing the load")
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.port, args.threads)
    elif args.target and args.requests:
        drive(args.target, args.api, args.requests, args.connections)
    else:
        parser.error("give --target and --requests, or --serve-echo --port N")


if __name__ == "__main__":
    main()
