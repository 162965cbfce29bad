"""Behind a ClusterIP Service, one long-lived client channel sticks to one pod unless the server
recycles its connections: ``--max-connection-age-seconds``.

A ClusterIP is one address; kube-proxy picks a backend per new TCP connection (IPVS's round-robin
scheduler, or iptables' random rule) and never per request, so an HTTP/2 channel's calls all go
where its one connection went. Three processes cannot share one address and port here to let the
kernel split connections (SO_REUSEPORT): Sightline turns gRPC's ``grpc.so_reuseport`` off on
purpose, and the first test shows a second server on a taken port refuses to start. So
``ClusterIpProxy`` stands in for kube-proxy: a TCP proxy that sends each new connection to the
next server in turn and copies bytes both ways.

With a short connection age the server sends GOAWAY after that age; the channel finishes the calls
in flight on the old connection and opens a new one, which the proxy sends to the next server. So
traffic moves across the fleet within an age, and no call may fail on the way.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time

from tests.fleet.load import SteadyLoad, channel

AGE = 1.0  # --max-connection-age-seconds
AGE_GRACE = 1.0  # --max-connection-age-grace-seconds: time for calls in flight at GOAWAY
LOAD_SECONDS = 5.0
CLUSTER_IP = "127.0.0.10"


class ClusterIpProxy:
    """Listens on CLUSTER_IP; each accepted connection is sent to the next backend in turn, as
    IPVS's rr scheduler does, and bytes are copied both ways until either side closes.
    ``connections`` holds (monotonic time accepted, backend address) per connection."""

    def __init__(self, backends: list[tuple[str, int]]):
        self.backends = backends
        self.connections: list[tuple[float, str]] = []
        self._listener = socket.create_server((CLUSTER_IP, 0))
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        host, port = self._listener.getsockname()
        return f"{host}:{port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            backend = self.backends[len(self.connections) % len(self.backends)]
            self.connections.append((time.monotonic(), f"{backend[0]}:{backend[1]}"))
            try:
                upstream = socket.create_connection(backend, timeout=5)
            except OSError:
                client.close()  # as a ClusterIP whose backend is gone: the client reconnects
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._copy, args=(source, sink), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # pass the half-close on, as TCP would
        except OSError:
            for sock in (source, sink):  # a reset on either side ends the pair
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def proxy_in_front_of(servers):
    proxy = ClusterIpProxy([(server.host, server.port) for server in servers])
    try:
        yield proxy
    finally:
        proxy.close()


def run_load_through(proxy: ClusterIpProxy) -> SteadyLoad:
    """LOAD_SECONDS of calls from 4 threads on one channel to the proxy (pick_first: the
    channel's default, and all there is to pick from behind one address)."""
    with channel(proxy.address) as cluster_ip:
        with SteadyLoad(cluster_ip, clients=4, interval=0.01) as load:
            time.sleep(LOAD_SECONDS)
    return load


def in_flight_at_reconnect(load: SteadyLoad, proxy: ClusterIpProxy) -> int:
    """Calls sent before a new connection opened and answered after it: the calls in flight
    on the old connection when its GOAWAY came."""
    opened = [at for at, _ in proxy.connections[1:]]
    return sum(1 for sent, ended, _, _ in load.calls if any(sent < at < ended for at in opened))


def test_a_second_server_on_a_taken_address_refuses_to_start(fleet):
    """Why the proxy: with grpc.so_reuseport off, two processes cannot split one port. The
    second says so and exits 2, as for any configuration it cannot serve."""
    (first,) = fleet.start(1)
    (second,) = fleet.start(1, port=first.port, wait=False)
    assert second.wait_exit(timeout=30) == 2
    log = second.log_path.read_text()
    assert f"cannot listen on {second.host}:{first.port}" in log, log[-2000:]
    first.wait_serving(timeout=5)  # the first one is unaffected


def test_max_connection_age_moves_one_channel_across_servers_without_a_failed_call(fleet):
    servers = fleet.start(3, args=["--max-connection-age-seconds", str(AGE),
                                   "--max-connection-age-grace-seconds", str(AGE_GRACE)])
    before = fleet.handled()
    with proxy_in_front_of(servers) as proxy:
        load = run_load_through(proxy)
    statuses = load.statuses()
    per_server = fleet.handled_since(before, statuses["OK"])
    opened = [round(at - proxy.connections[0][0], 2) for at, _ in proxy.connections]
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    caught = in_flight_at_reconnect(load, proxy)
    print(f"age {AGE}s: statuses {statuses}, per server {per_server}, connections opened at "
          f"{opened}, calls in flight at a reconnect {caught}")

    assert statuses["OK"] > 100 and set(statuses) == {"OK"}, load.failures()[:10]
    assert caught > 0, "no call was in flight at a reconnect: the race was not exercised"
    assert sum(per_server) == statuses["OK"], per_server
    assert sum(1 for count in per_server if count > 0) >= 2, per_server
    # an age and its +-10% jitter, then a reconnect at once: a new connection about every age
    assert len(opened) >= LOAD_SECONDS / AGE - 2, opened
    assert max(gaps) < 2 * AGE, opened


def test_without_a_short_connection_age_one_channel_stays_on_one_server(fleet):
    """The contrast: with the default age (300 s) the proxy sees one connection, and one
    server gets every call."""
    servers = fleet.start(3, args=["--max-connection-age-seconds", "300"])
    before = fleet.handled()
    with proxy_in_front_of(servers) as proxy:
        load = run_load_through(proxy)
    statuses = load.statuses()
    per_server = fleet.handled_since(before, statuses["OK"])
    print(f"default age: statuses {statuses}, per server {per_server}, "
          f"connections {len(proxy.connections)}")

    assert statuses["OK"] > 100 and set(statuses) == {"OK"}, load.failures()[:10]
    assert len(proxy.connections) == 1
    assert sorted(per_server)[:2] == [0, 0] and sum(per_server) == statuses["OK"], per_server
