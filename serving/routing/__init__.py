"""Routing: the A/B router's transport-free core, which decides which model version answers a
request and whether a candidate version should keep, gain or lose its share of live traffic.

- ``assignment``: a request key's bucket (a salted cryptographic hash, the same in every
  process) and the arm it falls in for a candidate share; raising the share only adds keys.
- ``stats``: pure functions of counts and samples: the Wilson interval, the fixed-horizon
  two-proportion z-test and its sample size, the always-valid mSPRT, the Mann-Whitney latency
  comparison and the sample-ratio-mismatch check.
- ``decide``: the experiment's configuration, per-arm counts and the ``decide`` function that
  turns them into the next state, candidate share and a reason naming the deciding number.
- ``feedback``: request ids signed with HMAC-SHA256 over what was served (experiment, arm,
  class, time), so a label sent hours later to any replica is counted for the right arm with
  no shared state; its rotating keys, and the filter that counts a repeated label once.
- ``experiment``: an experiment's definition (the name clients send, model, baseline and
  candidate, mode, guardrails, sticky key, salt), its YAML or JSON file with every error naming
  the field, and the file's live reload that keeps the last good definition.
- ``state``: an experiment's decision state, saved atomically under
  ``<repository>/.experiments/`` so a restart resumes it, and discarded when the definition
  it was decided under changes.
- ``fleet``: the PromQL that sums every server's ``sightline_ab_*`` counts and latency
  histogram by variant, and the ``decide.VariantCounts`` its answers make.
- ``controller``: ``sightline-ab controller``, which decides the experiments marked
  ``decided_by: controller`` on those fleet-wide counts and saves the state every server adopts.

The rule: this room imports no transport and no metrics library (no grpc, no
prometheus_client, nothing from ``serving.api`` or ``serving.observe``) and no TensorFlow; the
standard library (``controller`` asks Prometheus' HTTP API with urllib), numpy, scipy, PyYAML
and ``serving.errors`` only (tests/serving/test_rooms.py,
tests/serving/routing/test_imports.py). Its decisions are pure functions of counts and config,
so the same code judges one process, counts summed across processes, or counts read fleet-wide
from Prometheus by whoever wires it in.
"""
