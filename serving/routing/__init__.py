"""Routing: which servable answers a request (the A/B router's room, filled by that issue).

The data plane will ask it for a decision per request id; it will import no transport and no
metrics library (tests/serving/test_rooms.py), so that its decisions stay pure functions of
counts and config.
"""
