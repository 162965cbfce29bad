"""The router: which variant answers a request, what each variant did, and when to decide.

What it is: one ``Router`` per server process holds the live experiments (from
``routing.experiment``), each one's decision state (persisted by ``routing.state``) and its
counts per variant. It is the data plane's only door into routing:
- ``route(model, key)`` -> a ``Route`` (the experiment, the variant, the version or label to
  serve) for a request naming an experiment, or its model with no version or label; else None;
- ``finished(route, ok, seconds, predicted_class)`` counts the outcome and returns the signed
  request id (``routing.feedback``) that lets any replica accept its label later;
- ``verify(request_id)`` reads what a signed id says was served, and ``label(...)`` counts
  its late true label;
- ``step(now)`` runs ``decide.decide`` on every experiment's counts, applies and persists a
  changed decision, and logs it with its reason. An experiment ``decided_by: controller`` is
  not decided here: ``step`` adopts the state the fleet's controller (``routing.controller``)
  saved, and operator actions on it are refused (they belong to the controller's file). A
  ``shared`` router (one of ``--processes``) decides nothing itself either: it adopts what
  the supervisor decided on every process's counts summed; operator actions are taken, saved,
  and adopted by the other processes.

What it guarantees:
- Assignment is ``assignment.bucket(salt, key)`` against the state's candidate share: the same
  key gets the same variant in every process and replica, and a rolled-back or halted
  experiment sends everything to the baseline.
- Decisions are the pure ``decide.decide`` of counts and config, never of anything this
  object remembers beyond those counts, so summed counts decide the same way fleet-wide.
- A canary step's counts start at zero when the step changes (``decide`` judges each step on
  its own traffic).
- Thread-safe: one lock around counters, held for a few additions per request.
"""

from __future__ import annotations

import bisect
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from serving.routing.assignment import Variant, bucket, variant_for
from serving.routing.decide import State, VariantCounts, decide
from serving.routing.experiment import Experiment, VariantSpec
from serving.routing.feedback import FeedbackKeys, FeedbackRejected, RecentLabels, Served, sign
from serving.routing.feedback import verify as verify_id
from serving.routing.state import ExperimentState, StateStore
from serving.routing.stats import slower_p_value

__all__ = ["LATENCY_BUCKETS", "ExperimentEnded", "Route", "Router", "ShadowTotals", "Totals"]

log = logging.getLogger("sightline.routing")
LATENCY_SAMPLES = 4096  # per variant: the p99 of the last this-many requests
LABEL_MAX_AGE_SECONDS = 7 * 24 * 3600  # a label later than this is refused as expired
# Upper bounds of every latency histogram: the request histograms (observe.metrics) and the
# per-variant one (sightline_ab_latency_seconds) that the fleet controller's p99 and
# Mann-Whitney test read. 0.1 s, the latency SLO, must stay a bound.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class ExperimentEnded(Exception):
    """An operator action on an experiment that has ended (rolled back, halted), or that the
    fleet's controller decides."""


@dataclass(frozen=True)
class Route:
    experiment: Experiment
    variant: Variant

    @property
    def spec(self) -> VariantSpec:
        return (self.experiment.candidate if self.variant is Variant.CANDIDATE
                else self.experiment.baseline)


@dataclass
class Totals:
    """One variant's counts since the process started, never reset (for metrics: counters
    must only grow, while a canary step is judged on its own traffic)."""

    requests: int = 0
    errors: int = 0
    feedback: int = 0
    correct: int = 0
    # Successful requests' latencies: counts per LATENCY_BUCKETS bound (the last: above all).
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0


@dataclass
class _Arm(Totals):
    """One variant's counts in the window being judged, and its recent latencies."""

    latencies: collections.deque = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))

    def copy(self) -> _Arm:
        """What ``counts`` reads, copied (under the router's lock: a few µs)."""
        return replace(self, latencies=collections.deque(self.latencies))

    def counts(self, baseline: _Arm | None = None) -> VariantCounts:
        """The arm's counts; against ``baseline``'s latencies, how likely it is slower."""
        p99 = float(np.percentile(self.latencies, 99)) if self.latencies else float("nan")
        slower = 1.0 if baseline is None else slower_p_value(baseline.latencies, self.latencies)
        return VariantCounts(self.requests, self.feedback, self.correct, self.errors,
                             p99 if p99 > 0 else float("nan"), slower)


@dataclass
class ShadowTotals:
    """What shadow copies showed, since the process started: no labels needed."""

    mirrored: int = 0  # copies the candidate answered
    dropped: int = 0  # copies not run: the queue was full, or the candidate was not there
    agreed: int = 0  # copies whose top-1 class matched the baseline's
    confidence_difference_sum: float = 0.0  # candidate's top-1 probability minus baseline's
    explained: int = 0  # copies with both variants' maps
    map_correlation_sum: float = 0.0
    top_region_overlap_sum: float = 0.0


@dataclass
class _Running:
    experiment: Experiment
    state: ExperimentState
    arms: dict[Variant, _Arm] = field(default_factory=lambda: {v: _Arm() for v in Variant})
    last_reason: str = ""  # the latest decision's reason, also when it changed nothing


class Router:
    def __init__(self, keys: FeedbackKeys, store: StateStore | None = None, *,
                 clock: Callable[[], float] = time.time, recent_labels: int = 100_000,
                 shared: bool = False):
        self.keys = keys
        self.store = store
        self.shared = shared
        self.clock = clock
        self._recent = RecentLabels(recent_labels, LABEL_MAX_AGE_SECONDS)
        self._running: dict[str, _Running] = {}
        self._by_model: dict[str, str] = {}  # model name -> experiment name
        self._totals: dict[tuple[str, Variant], Totals] = collections.defaultdict(Totals)
        self.decisions: collections.Counter = collections.Counter()  # (name, state) -> count
        self._shadow: dict[str, ShadowTotals] = collections.defaultdict(ShadowTotals)
        self._lock = threading.Lock()  # counters
        self._deciding = threading.RLock()  # decisions and operator actions, one at a time

    # -- the experiments ------------------------------------------------------------------

    def set_experiments(self, experiments: dict[str, Experiment]) -> None:
        """Run exactly these: an unchanged definition keeps its counts and state, a new or
        changed one starts from its saved state (when the definition matches) or afresh."""
        now = self.clock()
        with self._lock:
            running = {}
            for name, experiment in experiments.items():
                old = self._running.get(name)
                if old is not None and old.experiment == experiment:
                    running[name] = old
                    continue
                state = (self.store.restore(experiment, now) if self.store is not None
                         else StateStore.initial(experiment, now))
                running[name] = _Running(experiment, state)
                log.info("experiment %s on %s: %s (%s)", name, experiment.model,
                         state.state.value, state.reason or "started")
            for name in running:  # counters from zero: Prometheus' increase() sees each one
                for variant in Variant:
                    self._totals.setdefault((name, variant), Totals())
            self._running = running
            self._by_model = {r.experiment.model: name for name, r in running.items()}

    def experiments(self) -> dict[str, Experiment]:
        return {name: r.experiment for name, r in self._running.items()}

    @property
    def active(self) -> bool:
        """Whether any experiment runs: the request path's one check when none does."""
        return bool(self._running)

    def state(self, name: str) -> ExperimentState:
        return self._running[name].state

    # -- the request path -----------------------------------------------------------------

    def experiment_for(self, model: str) -> Experiment | None:
        """The experiment a request for ``model`` (an experiment's name, or its model) joins."""
        running = self._running.get(model) or self._running.get(self._by_model.get(model, ""))
        return None if running is None else running.experiment

    def route(self, model: str, key: str) -> Route | None:
        """The variant for a request naming ``model`` (an experiment's name, or its model)."""
        running = self._running.get(model) or self._running.get(self._by_model.get(model, ""))
        if running is None:
            return None
        experiment = running.experiment
        share = running.state.candidate_share
        return Route(experiment, variant_for(bucket(experiment.salt, key), share))

    def fall_back(self, route: Route) -> Route:
        """The baseline, for a request whose candidate is not loaded: clients see no error."""
        return replace(route, variant=Variant.BASELINE)

    def finished(self, route: Route, ok: bool, seconds: float,
                 predicted_class: int | None) -> str | None:
        """Count one routed request; -> its signed request id (None when it failed)."""
        with self._lock:
            running = self._running.get(route.experiment.name)
            if running is not None and running.experiment is route.experiment:
                arm = running.arms[route.variant]
                arm.requests += 1
                arm.errors += not ok
                if ok:
                    arm.latencies.append(seconds)
                total = self._totals[route.experiment.name, route.variant]
                total.requests += 1
                total.errors += not ok
                if ok:
                    total.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
                    total.latency_sum += seconds
        if not ok or predicted_class is None:
            return None
        served = Served(route.experiment.name, route.variant.value, predicted_class,
                        int(self.clock()))
        return sign(self.keys, served)

    def verify(self, request_id: str) -> Served:
        """What a signed request id says was served; raises ``FeedbackRejected`` (malformed,
        forged, expired, future, unknown_experiment)."""
        served = verify_id(self.keys, request_id, self.clock(), LABEL_MAX_AGE_SECONDS)
        if served.experiment not in self._running:
            raise FeedbackRejected("unknown_experiment", f"no experiment "
                                   f"{served.experiment!r} runs here now")
        return served

    def label(self, served: Served, request_id: str, true_class: int) -> None:
        """Count a late label for a verified id; a second label for one id within the window
        raises ``FeedbackRejected("duplicate")``."""
        with self._lock:
            running = self._running.get(served.experiment)
            if running is None:
                raise FeedbackRejected("unknown_experiment", f"no experiment "
                                       f"{served.experiment!r} runs here now")
            if not self._recent.first_time(request_id, self.clock()):
                raise FeedbackRejected("duplicate", "this request's label was already counted")
            variant = Variant(served.variant)
            right = served.predicted_class == true_class
            for counts in (running.arms[variant], self._totals[served.experiment, variant]):
                counts.feedback += 1
                counts.correct += right

    # -- decisions --------------------------------------------------------------------------

    def shadow_dropped(self, name: str) -> None:
        with self._lock:
            self._shadow[name].dropped += 1

    def shadowed(self, name: str, *, agreed: bool, confidence_difference: float,
                 map_correlation: float | None, top_region_overlap: float | None) -> None:
        """One shadow copy's comparison with the baseline's answer (``inference.shadow``)."""
        with self._lock:
            shadow = self._shadow[name]
            shadow.mirrored += 1
            shadow.agreed += agreed
            shadow.confidence_difference_sum += confidence_difference
            if map_correlation is not None and top_region_overlap is not None:
                shadow.explained += 1
                shadow.map_correlation_sum += map_correlation
                shadow.top_region_overlap_sum += top_region_overlap

    def shadow_totals(self) -> dict[str, ShadowTotals]:
        with self._lock:
            return {name: replace(t) for name, t in self._shadow.items()
                    if name in self._running}

    def totals(self) -> dict[tuple[str, Variant], Totals]:
        """(experiment, variant) -> counts since start, for the running experiments."""
        with self._lock:
            return {key: replace(t, latency_counts=list(t.latency_counts))
                    for key, t in self._totals.items() if key[0] in self._running}

    def counts(self, name: str) -> tuple[VariantCounts, VariantCounts]:
        """Copied under the lock, computed outside it: the statistics take 2-3 ms over 4,096
        latencies each, and every routed request's ``finished`` waits for this lock."""
        with self._lock:
            arms = self._running[name].arms
            baseline, candidate = arms[Variant.BASELINE].copy(), arms[Variant.CANDIDATE].copy()
        return baseline.counts(), candidate.counts(baseline)

    def reason(self, name: str) -> str:
        """Why the experiment is where it is now: the last decision's words, changed or not."""
        running = self._running[name]
        return running.last_reason or running.state.reason

    def step(self, now: float | None = None) -> list[ExperimentState]:
        """Decide every running experiment on its counts; -> the states that changed
        (persisted). A terminal state stays as it is; an operator's share holds while the
        verdict is to keep running."""
        now = self.clock() if now is None else now
        changed = []
        for name in list(self._running):
            try:
                with self._deciding:  # an operator's action lands before or after, not inside
                    new = self._step(name, now)
            except Exception:  # one broken experiment must not stop the others' decisions
                log.exception("deciding experiment %s failed", name)
                continue
            if new is not None:
                changed.append(new)
        return changed

    def _step(self, name: str, now: float) -> ExperimentState | None:
        running = self._running.get(name)
        if running is not None and (running.experiment.decided_by == "controller"
                                    or self.shared):
            return self._adopt(running)
        if running is None or running.state.state.terminal:
            return None
        state = running.state
        baseline, candidate = self.counts(name)
        decision = decide(state.state, state.step_index, state.step_started_at, now,
                          baseline, candidate, running.experiment.config,
                          share_in_effect=state.operator_share)
        running.last_reason = decision.reason
        share = decision.candidate_share
        if decision.state is State.RUNNING and decision.step_index == state.step_index and (
                state.operator_share is not None):
            share = state.operator_share
        if (decision.state, share, decision.step_index) == (
                state.state, state.candidate_share, state.step_index):
            return None
        return self._apply(running, decision.state, share, decision.step_index,
                           decision.reason, now)

    def _adopt(self, running: _Running) -> ExperimentState | None:
        """The controller's latest decision, when it saved one for this definition."""
        saved = None if self.store is None else self.store.load(running.experiment.name)
        old = running.state
        if saved is None or saved.config_digest != old.config_digest or saved == old:
            return None
        with self._lock:
            running.state = saved
            moved = (saved.step_index, saved.candidate_share) != (
                old.step_index, old.candidate_share)
            if saved.state is State.RUNNING and moved:
                running.arms = {v: _Arm() for v in Variant}  # as the controller's window
            # an ended experiment keeps the counts it ended on, for its status, as in _apply
            self.decisions[saved.name, saved.state.value] += 1
        running.last_reason = saved.reason
        log.info("experiment %s: the controller decided %s, candidate share %.4g (%s)",
                 saved.name, saved.state.value, saved.candidate_share, saved.reason)
        return saved

    def set_share(self, name: str, share: float, reason: str) -> ExperimentState:
        """An operator's weight (``sightline-ab set-weight``): it holds until a verdict other
        than "keep running" (a rollback, a halt, the next canary step)."""
        with self._deciding:
            running = self._live(name)
            return self._apply(running, State.RUNNING, share, running.state.step_index, reason,
                               self.clock(), operator_share=share)

    def end(self, name: str, state: State, reason: str) -> ExperimentState:
        """Roll back (share 0) or promote (share 1) by hand. Promotion may follow the
        router's own "promotable"; nothing else may follow an ended experiment."""
        with self._deciding:
            running = self._running[name]
            if not (state is State.PROMOTABLE and running.state.state is State.PROMOTABLE
                    and running.experiment.decided_by == "server"):
                running = self._live(name)
            share = 1.0 if state is State.PROMOTABLE else 0.0
            return self._apply(running, state, share, running.state.step_index, reason,
                               self.clock())

    def _live(self, name: str) -> _Running:
        running = self._running[name]
        if running.experiment.decided_by == "controller":
            raise ExperimentEnded(f"experiment {name} is decided by the fleet's controller "
                                  "(decided_by: controller): act on it there, not on one "
                                  "server")
        if running.state.state.terminal:
            raise ExperimentEnded(f"experiment {name} has ended ({running.state.state.value}: "
                                  f"{running.state.reason}); change its definition in the "
                                  "experiments file to start it again")
        return running

    def _apply(self, running: _Running, state: State, share: float, step: int, reason: str,
               now: float, operator_share: float | None = None) -> ExperimentState:
        old = running.state
        new = replace(old, state=state, candidate_share=share, step_index=step, reason=reason,
                      updated_at=now, step_started_at=now if step != old.step_index
                      else old.step_started_at, operator_share=operator_share)
        with self._lock:
            running.state = new
            # One window, one share: a canary step, or a share set by hand, is judged on its
            # own traffic (counts taken at two shares would fail the split check).
            # An ended experiment keeps the counts that ended it, for its status.
            if not state.terminal and (step != old.step_index or share != old.candidate_share):
                running.arms = {v: _Arm() for v in Variant}
            self.decisions[new.name, state.value] += 1
        running.last_reason = reason
        if self.store is not None:
            try:
                self.store.save(new)
            except OSError as exc:  # a read-only repository: decide on, in memory
                log.error("experiment %s: cannot save its state (%s); the decision holds "
                          "until this process restarts", new.name, exc)
        level = logging.WARNING if state in (State.ROLLED_BACK, State.HALTED_SRM) else logging.INFO
        log.log(level, "experiment %s: %s, candidate share %.4g (%s)",
                new.name, state.value, share, reason)
        return new
