"""Observability: Prometheus metrics (``metrics``, ``collectors``, ``interceptor``,
``deferred``), their HTTP endpoint (``metrics_http``), drift monitors (``drift``) and logs.

Metrics wrap the data path through its ``Observer`` hooks; they never sit inside it. ``drift``
and ``logs`` import no metrics library, so the data plane may use them.
"""
