"""Client-side load balancing over a headless Service: one channel, three server addresses.

A headless Service's DNS name answers with every ready pod's A record; gRPC's ``ipv4:`` static
list is the same resolver result without DNS. What spreads the load is the channel's load-balancing
policy: round_robin opens a connection to every address and picks them in turn, while gRPC's
default, pick_first, sends everything down the first connection that works. Where requests went
is read from each server's own metrics, not from the client.
"""

from tests.fleet.load import channel, classify_many

REQUESTS = 600
SPREAD = 0.10  # each server's share within +-10% of a third


def test_round_robin_spreads_requests_evenly_over_three_servers(fleet):
    fleet.start(3)
    before = fleet.handled()
    with channel(fleet.target(), [("grpc.lb_policy_name", "round_robin")]) as rr:
        statuses = classify_many(rr, REQUESTS)
    per_server = fleet.handled_since(before, REQUESTS)
    print(f"round_robin: {REQUESTS} requests -> per server {per_server}, statuses {statuses}")

    assert statuses == {"OK": REQUESTS}
    assert sum(per_server) == REQUESTS, per_server  # the servers saw every call, once
    third = REQUESTS / 3
    assert all(abs(count - third) <= SPREAD * third for count in per_server), per_server


def test_pick_first_sends_every_request_to_one_server(fleet):
    """The contrast: the same address list with gRPC's default policy does not spread at all,
    so the spread above is the policy's doing, not the fleet's."""
    fleet.start(3)
    before = fleet.handled()
    with channel(fleet.target()) as pick_first:
        statuses = classify_many(pick_first, REQUESTS // 2)
    per_server = fleet.handled_since(before, REQUESTS // 2)
    print(f"pick_first: {REQUESTS // 2} requests -> per server {per_server}")

    assert statuses == {"OK": REQUESTS // 2}
    assert sorted(per_server) == [0, 0, REQUESTS // 2], per_server
