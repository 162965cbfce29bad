"""The fleet-wide A/B controller: one decision per experiment on every server's counts summed.

What it is: ``Controller`` reads the experiments file (the same one every server reads), takes
each experiment marked ``decided_by: controller``, asks Prometheus for the fleet's counts since
that experiment's last decision (``routing.fleet``), runs the same pure ``decide.decide`` a
server runs on its own counts, and saves a changed decision with ``state.StateStore`` under
``<repository>/.experiments/``. Every server polls that file and adopts it
(``Router.step``), so a rollback, a halt or the next canary step reaches the whole fleet
within a server's decide interval. ``PrometheusQuery`` is the HTTP API client it uses.

Who calls it: ``sightline-ab controller`` (``serving.ab``), one replica per fleet, every
``--interval-seconds``; tests call ``tick`` directly.

What it guarantees:
- The servers never decide a controlled experiment, and the controller decides nothing else.
- A new experiment's state is saved at once, so its window starts then for every reader.
- No decision on a window shorter than ``min_window_seconds``: ``increase()`` extrapolates a
  window of a few scrapes by tens of percent, enough to reach ``min_requests`` early.
- A terminal state is never changed (as ``decide`` guarantees); changing the definition starts
  the experiment afresh (as ``StateStore.restore`` guarantees).
- A Prometheus that cannot be reached or answers an error decides nothing for that tick: the
  last decision holds, and the log says why. One bad experiment never stops the others.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

from serving.routing.decide import State, VariantCounts, decide
from serving.routing.experiment import Experiment, ExperimentFile
from serving.routing.fleet import fleet_counts, queries
from serving.routing.state import ExperimentState, StateStore

__all__ = ["Controller", "Counts", "PrometheusError", "PrometheusQuery", "prometheus_counts"]

log = logging.getLogger("sightline.routing")
Counts = Callable[[Experiment, float, float], tuple[VariantCounts, VariantCounts]]


class PrometheusError(Exception):
    """Prometheus could not be asked, or refused the query."""


class PrometheusQuery:
    """``query(expr) -> [sample, ...]``: an instant vector from ``/api/v1/query``."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __call__(self, expr: str) -> list[dict]:
        address = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(address, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: bad JSON
            raise PrometheusError(f"{self.url}: {exc}") from None
        if answer.get("status") != "success" or answer["data"]["resultType"] != "vector":
            raise PrometheusError(f"{self.url} refused {expr!r}: {answer.get('error', answer)}")
        return answer["data"]["result"]


def prometheus_counts(query: Callable[[str], list[dict]]) -> Counts:
    """The fleet's counts over a window, from Prometheus (``routing.fleet``'s queries)."""
    def counts(experiment: Experiment, since: float, now: float):
        return fleet_counts({what: query(expr)
                             for what, expr in queries(experiment, now - since).items()})
    return counts


class Controller:
    """``counts(experiment, since, now) -> (baseline, candidate)``: the counts to judge, from
    Prometheus (``prometheus_counts``) or from a server's own processes
    (``processes.LocalCounts``); ``decides``: which experiments are this controller's
    (``decided_by: controller`` for the fleet's, ``server`` for the supervisor of
    ``--processes``, whose workers never decide by themselves)."""

    def __init__(self, definitions: ExperimentFile, store: StateStore, counts: Counts, *,
                 decides: str = "controller", min_window_seconds: float = 0.0,
                 clock: Callable[[], float] = time.time):
        self.definitions = definitions
        self.store = store
        self.counts = counts
        self.decides = decides
        self.min_window_seconds = min_window_seconds
        self.clock = clock
        self.reasons: dict[str, str] = {}  # the latest decision's words, changed or not

    def tick(self) -> list[ExperimentState]:
        """Decide every controlled experiment once; -> the states that changed (saved)."""
        self.definitions.poll()
        changed = []
        for experiment in self.definitions.current.values():
            if experiment.decided_by != self.decides:
                continue
            try:
                new = self._decide(experiment)
            except PrometheusError as exc:
                log.error("experiment %s: no decision this time, the last one holds: %s",
                          experiment.name, exc)
                continue
            except Exception:
                log.exception("deciding experiment %s failed", experiment.name)
                continue
            if new is not None:
                changed.append(new)
        return changed

    def run(self, interval_seconds: float, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            started = time.monotonic()
            self.tick()
            time.sleep(max(0.0, interval_seconds - (time.monotonic() - started)))

    def _decide(self, experiment: Experiment) -> ExperimentState | None:
        now = self.clock()
        saved = self.store.load(experiment.name)
        state = self.store.restore(experiment, now)
        if state != saved:  # new, or its definition changed: the window starts now
            self.store.save(state)
            log.info("experiment %s on %s: %s (%s)", experiment.name, experiment.model,
                     state.state.value, state.reason)
        if state.state.terminal:
            return None
        if now - state.updated_at < self.min_window_seconds:
            log.debug("experiment %s: window of %.0fs, shorter than %gs: not deciding yet",
                      experiment.name, now - state.updated_at, self.min_window_seconds)
            return None
        # Every saved decision of a running experiment changed its share or step, and a
        # server judges a share's or a step's own traffic: the window starts at the last one.
        baseline, candidate = self.counts(experiment, state.updated_at, now)
        decision = decide(state.state, state.step_index, state.step_started_at, now, baseline,
                          candidate, experiment.config, share_in_effect=state.operator_share)
        self.reasons[experiment.name] = decision.reason
        share, operator_share = decision.candidate_share, None
        if decision.state is State.RUNNING and decision.step_index == state.step_index and (
                state.operator_share is not None):  # an operator's share holds, as in Router
            share = operator_share = state.operator_share
        if (decision.state, share, decision.step_index) == (
                state.state, state.candidate_share, state.step_index):
            log.debug("experiment %s: %s", experiment.name, decision.reason)
            return None
        new = dataclasses.replace(
            state, state=decision.state, candidate_share=share,
            step_index=decision.step_index, reason=decision.reason, updated_at=now,
            step_started_at=now if decision.step_index != state.step_index
            else state.step_started_at, operator_share=operator_share)
        self.store.save(new)
        level = logging.WARNING if decision.state.value in ("rolled_back", "halted_srm") else (
            logging.INFO)
        log.log(level, "experiment %s: %s, candidate share %.4g, %s (%s)",
                experiment.name, decision.state.value, share,
                "fleet-wide" if self.decides == "controller" else "on every process",
                decision.reason)
        return new
