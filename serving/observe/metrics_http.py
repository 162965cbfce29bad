"""The /metrics endpoint: Prometheus text over HTTP, with bounded connections and timeouts.

prometheus_client's ``start_http_server`` gives every connection a thread with no timeout and no
bound, so 50 half-sent requests held 50 threads for good; it has no way to ask for a token.
This server, on the standard library's ``ThreadingHTTPServer``:
- serves at most ``max_connections`` at once; past that a connection is closed unanswered;
- gives each connection ``timeout_seconds`` in all to send its request and read the answer,
  then closes it (a client sending a byte every few seconds is cut off too);
- when given tokens, answers 401 unless ``Authorization: Bearer <token>`` matches one
  (Prometheus: ``authorization: {credentials_file: ...}`` in the scrape config);
- answers GET /metrics only (plus HEAD); the exposition format follows the Accept header
  (OpenMetrics or text), gzip when asked, as prometheus_client does.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from serving.api.auth import token_matches

__all__ = ["MetricsServer"]

log = logging.getLogger("sightline.metrics")


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 tokens: list[bytes] | None = None, max_connections: int = 8,
                 timeout_seconds: float = 10.0):
        self.address_family = _family(host)
        self.registry = registry
        self.tokens = tokens
        self.timeout_seconds = timeout_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), _Handler)
        self.port = self.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):  # full: close at once, hold no thread
            self.shutdown_request(request)
            return
        request.settimeout(self.timeout_seconds)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        cutoff = threading.Timer(self.timeout_seconds, _cut, args=(request,))
        cutoff.name = "metrics-http-cutoff"
        cutoff.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            cutoff.cancel()
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.0"  # one request per connection: a slot is never held idle

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            return self._plain(404, "not found: the metrics are at /metrics\n", body)
        if self.server.tokens is not None and not token_matches(
                self.headers.get("Authorization", ""), self.server.tokens):
            return self._plain(401, "missing or invalid bearer token\n", body,
                               {"WWW-Authenticate": "Bearer"})
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        output = encoder(self.server.registry)
        headers = {"Content-Type": content_type}
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            output, headers["Content-Encoding"] = gzip.compress(output), "gzip"
        self._send(200, output if body else b"", headers, len(output))

    def _plain(self, code: int, text: str, body: bool, headers: dict | None = None) -> None:
        data = text.encode()
        self._send(code, data if body else b"",
                   {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}, len(data))

    def _send(self, code: int, data: bytes, headers: dict, length: int) -> None:
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics http: " + format, *args)


def _cut(sock: socket.socket) -> None:
    """The connection's time is up: wake its thread from a read or write."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
