"""A rolling restart under steady load loses no call.

Three servers behind one round_robin channel take steady load from 4 client threads while each
server in turn gets SIGTERM, exits, and is replaced on the same address and port, as a Deployment's
rollout replaces pods one at a time (waiting for each new pod to be ready). Every call's status
is counted; the run passes only if none failed.

What makes it lossless is the channel's client-side health checking (``healthCheckConfig`` in
the service config; grpcio needs nothing else): the channel watches grpc.health.v1 on every
server and picks only those saying SERVING. A server turns NOT_SERVING the moment it gets SIGTERM
and goes on answering for ``--drain-seconds``, so the channel stops picking it while it still
answers, before it refuses anything; a replacement is NOT_SERVING until its model is warm, so it
gets no call before it can answer. The test checks that mechanism directly: a draining server
answers no call once the health change has had WATCH_LAG to arrive.

No retry policy is set, so nothing hides a call that reached a server at the wrong moment.
Without health checking the draining server answers about a third of the calls until its drain
ends; what happens then is a race: when a call arrives in the first moments after the drain,
the server refuses calls with UNAVAILABLE for up to a second (tens of failed calls, sometimes a
CANCELLED one as gRPC stops); otherwise gRPC's GOAWAY moves the calls to the other servers.
"""

from __future__ import annotations

import time

from tests.fleet.conftest import service_config
from tests.fleet.load import SteadyLoad, channel

DRAIN = 1.0  # --drain-seconds: NOT_SERVING but answering
WATCH_LAG = 0.2  # time for a health change to reach the channel (a Health/Watch stream)
CLIENTS = 4
INTERVAL = 0.02  # each client's pace: about 4 x 40 calls a second, modest on two cores
SETTLE = 0.3  # after a replacement is SERVING, before the next server goes


def roll(fleet, load: SteadyLoad) -> list[dict]:
    """Restart every server in turn under ``load``; per step: the old process's exit status,
    the calls it answered while draining (after WATCH_LAG, until shortly before the drain
    ends), how long stopping and starting took, and the clients' statuses so far."""
    steps = []
    for server in fleet.servers:
        began = time.monotonic()
        server.send_sigterm()
        time.sleep(WATCH_LAG)
        answered = server.handled()
        time.sleep(DRAIN - WATCH_LAG - 0.3)
        drained = server.handled() - answered
        code = server.wait_exit()
        stopped = time.monotonic()
        server.launch()
        server.wait_serving()
        time.sleep(SETTLE)
        steps.append({"server": server.address, "exit": code, "calls_while_draining": int(drained),
                      "stop_s": round(stopped - began, 2),
                      "start_s": round(time.monotonic() - stopped - SETTLE, 2),
                      "statuses": dict(load.statuses())})
    return steps


def test_a_rolling_restart_under_steady_load_fails_no_call(fleet):
    fleet.start(3, args=["--drain-seconds", str(DRAIN)])
    options = [("grpc.service_config", service_config("round_robin", health_check=True))]
    began = time.monotonic()
    with channel(fleet.target(), options) as balanced:
        with SteadyLoad(balanced, clients=CLIENTS, interval=INTERVAL) as load:
            time.sleep(0.5)  # load on all three before the first goes
            steps = roll(fleet, load)
            time.sleep(1.0)  # and on all three replacements after the last
    statuses = load.statuses()
    print(f"rolling restart in {time.monotonic() - began:.1f}s: {dict(statuses)}")
    for step in steps:
        print(f"  {step}")

    assert [step["exit"] for step in steps] == [0, 0, 0], steps
    # the channel stopped picking each server as it turned NOT_SERVING, while it still answered
    assert all(step["calls_while_draining"] <= 2 for step in steps), steps
    assert all(server.starts == 2 for server in fleet.servers)
    assert set(statuses) == {"OK"}, load.failures()[:20]
    assert statuses["OK"] > 300, statuses  # the load really ran through every step
    # and the replacements took their share: the last second's calls reached all three
    assert all(server.handled() > 0 for server in fleet.servers), fleet.handled()
