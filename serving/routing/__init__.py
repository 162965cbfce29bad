"""Routing: the A/B router's transport-free core, which decides which model version answers a
request and whether a candidate version should keep, gain or lose its share of live traffic.

- ``assignment``: a request key's bucket (a salted cryptographic hash, the same in every
  process) and the arm it falls in for a candidate share; raising the share only adds keys.
- ``stats``: pure functions of counts and samples: the Wilson interval, the fixed-horizon
  two-proportion z-test and its sample size, the always-valid mSPRT, the Mann-Whitney latency
  comparison and the sample-ratio-mismatch check.
- ``decide``: the experiment's configuration, per-arm counts and the ``decide`` function that
  turns them into the next state, candidate share and a reason naming the deciding number.

The rule: this room imports no transport and no metrics library (no grpc, no
prometheus_client, nothing from ``serving.api`` or ``serving.observe``) and no TensorFlow;
numpy and scipy only (tests/serving/test_rooms.py). Its decisions are pure functions of counts
and config, so the same code judges one process, counts summed across processes, or counts read
fleet-wide from Prometheus by whoever wires it in.
"""
