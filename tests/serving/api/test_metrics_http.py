"""The /metrics endpoint on loopback: where it binds, tokens, and what slow or half-sent
requests can hold."""

import gzip
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from serving.observe.metrics_http import MetricsServer
from tests.serving.conftest import scrape


@pytest.fixture
def metrics_server():
    """metrics_server(**options) -> a started MetricsServer on a free loopback port."""
    servers = []

    def start(**options):
        registry = CollectorRegistry()
        Counter("demo_requests", "A counter for the test.", registry=registry).inc(3)
        server = MetricsServer("127.0.0.1", 0, registry, **options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def get(port: int, path: str = "/metrics", **headers) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serves_text_openmetrics_and_gzip(metrics_server):
    port = metrics_server().port
    status, headers, body = get(port)
    assert status == 200 and b"demo_requests_total 3.0" in body
    assert headers["Content-Type"].startswith("text/plain")
    _, headers, body = get(port, Accept="application/openmetrics-text; version=1.0.0")
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    _, headers, body = get(port, **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and b"demo_requests" in gzip.decompress(body)
    assert get(port, "/")[0] == 404 and get(port, "/metrics/../x")[0] == 404


def test_tokens_are_required_when_given(metrics_server):
    port = metrics_server(tokens=[b"scrape-secret"]).port
    assert get(port)[0] == 401
    assert get(port, Authorization="Bearer wrong")[0] == 401
    assert get(port, Authorization="scrape-secret")[0] == 401
    status, _, body = get(port, Authorization="Bearer scrape-secret")
    assert status == 200 and b"demo_requests_total" in body


def threads_now() -> int:
    """The metrics server's threads: one per connection served, and its cut-off timer."""
    return sum(1 for t in threading.enumerate()
               if t.name.endswith("(process_request_thread)") or t.name == "metrics-http-cutoff")


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed the connection (EOF or a reset) before the socket's timeout;
    False when it still holds it open."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_half_sent_requests_are_bounded_and_timed_out(metrics_server):
    """The defect: 50 half-sent requests held 50 threads that were never closed."""
    server = metrics_server(max_connections=4, timeout_seconds=0.5)
    before = threads_now()
    sockets = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /metr")  # and never the rest
        sockets.append(sock)
    time.sleep(0.2)
    assert threads_now() - before <= 2 * 4  # per allowed connection, at most: its own + a timer
    deadline = time.monotonic() + 5
    for sock in sockets:  # every one is closed by the server: past the bound, or timed out
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        with sock:
            assert closed_by_server(sock)
    time.sleep(0.2)
    assert threads_now() - before <= 0
    assert get(server.port)[0] == 200  # and it still serves


def test_a_request_trickled_a_byte_at_a_time_is_cut_off_at_the_timeout(metrics_server):
    """Slowloris: a byte every 0.3 s kept each read within its own timeout for good."""
    server = metrics_server(max_connections=1, timeout_seconds=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        closed = False
        for byte in b"GET /metrics HTTP/1.0\r\n" * 4:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server shut the connection
                closed = True
                break
            time.sleep(0.3)
            if time.monotonic() - started > 4:
                break
        assert closed or closed_by_server(sock)
        assert time.monotonic() - started < 2.5
    assert get(server.port)[0] == 200  # its one slot is free again


def test_the_metrics_endpoint_binds_where_the_server_listens(repository, start_server):
    server = start_server(repository, host="127.0.0.1", metrics_host="")
    assert server._metrics_http.server_address[0] == "127.0.0.1"
    assert "sightline_model_loaded" in scrape(server)


def test_with_auth_on_metrics_need_a_token_unless_told_otherwise(repository, start_server,
                                                                 tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text("the-token\n")
    server = start_server(repository, auth_token_file=str(tokens))
    assert get(server.metrics_port)[0] == 401
    assert "sightline_model_loaded" in scrape(server, token="the-token")
    with caplog.at_level(logging.WARNING, logger="sightline.server"):
        open_metrics = start_server(repository, auth_token_file=str(tokens), metrics_auth=False)
    assert get(open_metrics.metrics_port)[0] == 200
    assert any("answer without a token" in r.getMessage() for r in caplog.records)
