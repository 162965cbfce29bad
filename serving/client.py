"""A Python client for Sightline, and the ``sightline-classify`` command.

    sightline-classify cat.jpg dog.png --target localhost:8500 --top-k 3 --heatmap out.png

The client sets a deadline on every call and retries UNAVAILABLE (a restarting or draining
server) with exponential backoff; other errors are raised at once as ``grpc.RpcError``, except
in ``classify_batch``, where every image gets a response and a failure is its ``error``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.protos_gen.sightline.classifier.v1 import classifier_pb2 as pb
from serving.protos_gen.sightline.classifier.v1 import classifier_pb2_grpc as pb_grpc

__all__ = ["SightlineClient", "cli", "main"]

RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
MAX_PER_CALL = 32  # images per ClassifyBatch call; the server's max_request_images is 64
FIELD_OVERHEAD = 6  # bytes of a request inside a ClassifyBatchRequest besides its own: tag, length


class SightlineClient:
    def __init__(self, target: str, *, timeout: float = 10.0, retries: int = 3,
                 token: str | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls_ca or tls_cert:
            read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
            credentials = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
            self.channel = grpc.secure_channel(target, credentials, options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.ImageClassifierStub(self.channel)
        self.max_message_bytes = max_message_bytes
        self.timeout = timeout
        self.retries = retries
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def classify(self, image: bytes | str | Path, *, top_k: int | None = None,
                 heatmap: bool = False, method: str = "gradcam", target_class: int | None = None,
                 raw_map: bool = False, model: str = "", version: int = 0, label: str = "",
                 request_id: str = "") -> pb.ClassifyResponse:
        request = self.request(image, top_k=top_k, heatmap=heatmap, method=method,
                               target_class=target_class, raw_map=raw_map, model=model,
                               version=version, label=label, request_id=request_id)
        return self.call(self.stub.Classify, request)

    def classify_batch(self, images: Iterable[bytes | str | Path], *,
                       max_per_call: int = MAX_PER_CALL, **options) -> list[pb.ClassifyResponse]:
        """One response per image, in order, by ClassifyBatch calls of at most ``max_per_call``
        images that each fit ``max_message_bytes``; ``options`` are ``request``'s, for every
        image. A failed image's response carries only its ``error``; so does each of a call's
        images when the call fails as a whole (after the retries of UNAVAILABLE)."""
        if max_per_call < 1:
            raise ValueError(f"max_per_call must be at least 1; got {max_per_call}")
        requests = [self.request(image, **options) for image in images]
        responses = []
        for chunk in _chunks(requests, max_per_call, self.max_message_bytes):
            try:
                batch = self.call(self.stub.ClassifyBatch, pb.ClassifyBatchRequest(requests=chunk))
                responses.extend(batch.responses)
            except grpc.RpcError as exc:
                responses.extend(_failed(exc, r.request_id) for r in chunk)
        return responses

    def classify_stream(self, requests: Iterable[pb.ClassifyRequest]
                        ) -> Iterator[pb.ClassifyResponse]:
        """Responses in completion order; match them by request_id. No retries: a stream is
        not idempotent as a whole."""
        return self.stub.ClassifyStream(iter(requests), metadata=self.metadata)

    def model_info(self, model: str = "", version: int = 0, label: str = "") -> pb.ModelInfo:
        spec = pb.ModelSpec(name=model, version=version, label=label)
        return self.call(self.stub.GetModelInfo, pb.GetModelInfoRequest(model=spec))

    @staticmethod
    def request(image: bytes | str | Path, *, top_k: int | None = None, heatmap: bool = False,
                method: str = "gradcam", target_class: int | None = None, raw_map: bool = False,
                model: str = "", version: int = 0, label: str = "", request_id: str = ""
                ) -> pb.ClassifyRequest:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        request = pb.ClassifyRequest(image=data, request_id=request_id,
                                     model=pb.ModelSpec(name=model, version=version, label=label))
        if top_k is not None:
            request.top_k = top_k
        if heatmap or raw_map:
            request.explain.method = method
            request.explain.png_overlay = heatmap
            request.explain.raw_map = raw_map
            if target_class is not None:
                request.explain.target_class = target_class
        return request

    def call(self, method, request):
        """One call with the deadline, the token and retries of UNAVAILABLE."""
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    raise
                time.sleep(min(2.0, 0.1 * 2**attempt))
        raise AssertionError("unreachable")

    def wait_until_serving(self, timeout: float) -> None:
        """Block until the server's health check says SERVING (a model is warm); TimeoutError
        after ``timeout`` seconds."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        end = time.monotonic() + timeout
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0,
                                    wait_for_ready=True).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > end:
                raise TimeoutError(f"the server was not SERVING within {timeout:g}s")
            time.sleep(0.1)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SightlineClient:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _failed(exc: grpc.RpcError, request_id: str = "") -> pb.ClassifyResponse:
    """A call's failure as the response of one of its images."""
    error = pb.Error(code=exc.code().value[0], message=exc.details() or "")
    return pb.ClassifyResponse(request_id=request_id, error=error)


def _chunks(requests: Sequence[pb.ClassifyRequest], max_count: int, max_bytes: int
            ) -> Iterator[list[pb.ClassifyRequest]]:
    """Consecutive runs of at most ``max_count`` requests whose ClassifyBatchRequest fits
    ``max_bytes``; a request too big for that goes alone (and gRPC refuses it alone)."""
    chunk, size = [], 0
    for request in requests:
        needed = request.ByteSize() + FIELD_OVERHEAD
        if chunk and (len(chunk) == max_count or size + needed > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(request)
        size += needed
    if chunk:
        yield chunk


def heatmap_path(template: Path, image: Path, many: bool) -> Path:
    """--heatmap out.png: that file for one image; out-<image stem>.png for several."""
    return template.with_name(f"{template.stem}-{image.stem}{template.suffix}") if many \
        else template


def classify_files(client: SightlineClient, paths: list[Path], **options
                   ) -> list[pb.ClassifyResponse | str]:
    """Each file's response, or the error to print for it, in order. Several files go in
    ClassifyBatch calls, so they share the server's batches; one goes by Classify."""
    outcomes: list[pb.ClassifyResponse | str] = [""] * len(paths)
    images: dict[int, bytes] = {}
    for index, path in enumerate(paths):
        try:
            images[index] = path.read_bytes()
        except OSError as exc:
            outcomes[index] = str(exc)
    if len(paths) > 1:
        responses = client.classify_batch(images.values(), **options)
    else:
        responses = [_classify_one(client, image, options) for image in images.values()]
    for index, response in zip(images, responses, strict=True):
        error = response.error
        outcomes[index] = (f"{CODE_NAMES.get(error.code, error.code)}: {error.message}"
                           if response.HasField("error") else response)
    return outcomes


def _classify_one(client: SightlineClient, image: bytes, options) -> pb.ClassifyResponse:
    try:
        return client.classify(image, **options)
    except grpc.RpcError as exc:
        return _failed(exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sightline-classify",
                                     description="Classify images with a Sightline server.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--target", default="localhost:8500", help="host:port of the server")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--heatmap", type=Path, help="write the Grad-CAM overlay PNG here")
    parser.add_argument("--method", default="gradcam", help="CAM method (default gradcam)")
    parser.add_argument("--model", default="")
    parser.add_argument("--version", type=int, default=0)
    parser.add_argument("--label", default="")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call, seconds")
    parser.add_argument("--wait", type=float, default=0.0,
                        help="first wait up to this many seconds for the server to be SERVING")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--tls-ca", help="CA certificate to verify the server (enables TLS)")
    parser.add_argument("--tls-cert", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="client key (mutual TLS)")
    args = parser.parse_args(argv)
    failed = 0
    with SightlineClient(args.target, timeout=args.timeout, token=args.token,
                         tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                         tls_key=args.tls_key) as client:
        if args.wait:
            try:
                client.wait_until_serving(args.wait)
            except TimeoutError as exc:
                print(f"sightline-classify: {exc}", file=sys.stderr)
                return 2
        outcomes = classify_files(client, args.images, top_k=args.top_k,
                                  heatmap=args.heatmap is not None, method=args.method,
                                  model=args.model, version=args.version, label=args.label)
        for image, response in zip(args.images, outcomes, strict=True):
            if isinstance(response, str):
                print(f"{image}: {response}", file=sys.stderr)
                failed += 1
                continue
            classes = ", ".join(f"{c.label} {c.score:.3f}" for c in response.classes)
            print(f"{image}: {classes}  [{response.model_name} v{response.model_version}, "
                  f"{1000 * response.timing.total_seconds:.1f} ms]")
            if args.heatmap is not None:
                path = heatmap_path(args.heatmap, image, len(args.images) > 1)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(response.heatmap.png)
                print(f"  heatmap ({response.heatmap.method}, class "
                      f"{response.classes[0].label if response.classes else '?'}): {path}")
    return 1 if failed else 0


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
