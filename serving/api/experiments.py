"""``sightline.experiments.v1.Experiments``: late labels, status and operator actions for A/B
experiments, over the process's ``routing.Router``.

SendFeedback answers each label on its own (accepted, or the reason it was not), so one forged
or expired id never fails a batch. Status reports what ``decide`` sees: the counts per variant,
the accuracy interval, the always-valid p-value and the SRM p-value.
"""

from __future__ import annotations

import contextlib
import math

from serving.api.status import answer_errors
from serving.errors import BadRequest, FailedPrecondition, UnknownModel, shown
from serving.inference.dataplane import Inference
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2 as pb
from serving.protos_gen.sightline.experiments.v1 import experiments_pb2_grpc as pb_grpc
from serving.routing.assignment import Variant
from serving.routing.decide import State
from serving.routing.feedback import FeedbackRejected
from serving.routing.router import ExperimentEnded, Router
from serving.routing.stats import msprt_p_value, sample_ratio_p_value, wilson_interval

__all__ = ["ExperimentsService", "MAX_FEEDBACK", "SERVICE_NAME"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Experiments"].full_name
MAX_FEEDBACK = 1000  # labels in one SendFeedback


class ExperimentsService(pb_grpc.ExperimentsServicer):
    def __init__(self, router: Router, inference: Inference, promote=None):
        self.router = router
        self.inference = inference
        self._promote = promote  # (experiment) -> None: moves the baseline's label

    @answer_errors
    def SendFeedback(self, request, context):
        if len(request.feedback) > MAX_FEEDBACK:
            raise BadRequest("too_many_labels", f"{len(request.feedback):,} labels in one call; "
                                                f"at most {MAX_FEEDBACK:,}")
        results = [self._one(item) for item in request.feedback]
        return pb.SendFeedbackResponse(results=results,
                                       accepted=sum(r.accepted for r in results))

    def _one(self, item) -> pb.FeedbackResult:
        result = pb.FeedbackResult(feedback_id=item.feedback_id[:128])
        try:
            served = self.router.verify(item.feedback_id)
            self.router.label(served, item.feedback_id, self._true_class(item, served))
        except FeedbackRejected as exc:
            result.reason, result.message = exc.reason, str(exc)
            return result
        except BadRequest as exc:
            result.reason, result.message = "bad_label", str(exc)
            return result
        result.accepted = True
        return result

    def _true_class(self, item, served) -> int:
        """The label as a class index of the variant that answered (versions may order their
        classes differently)."""
        experiment = self.router.experiments()[served.experiment]
        spec = (experiment.candidate if served.variant == Variant.CANDIDATE.value
                else experiment.baseline)
        try:
            labels = self.inference.servable(experiment.model, spec.version,
                                             spec.label).card.labels
        except UnknownModel as exc:
            raise BadRequest("bad_label", f"the {served.variant} that answered is no longer "
                                          f"served, so its labels are unknown: {exc}") from None
        which = item.WhichOneof("truth")
        if which == "true_class":
            if not 0 <= item.true_class < len(labels):
                raise BadRequest("bad_label", f"true_class must be between 0 and "
                                              f"{len(labels) - 1}; got {item.true_class}")
            return item.true_class
        if which == "true_label":
            try:
                return labels.index(item.true_label)
            except ValueError:
                raise BadRequest("bad_label", f"unknown label {shown(item.true_label)}; the "
                                              f"model has {len(labels)} labels (GetModelInfo "
                                              "lists them)") from None
        raise BadRequest("bad_label", "give true_class or true_label")

    @answer_errors
    def ABStatus(self, request, context):
        names = sorted(self.router.experiments())
        if request.experiment:
            names = [self._known(request.experiment)]
        return pb.ABStatusResponse(experiments=[self._status(name) for name in names])

    @answer_errors
    def SetWeight(self, request, context):
        share = request.candidate_share
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise BadRequest("bad_share", f"candidate_share must be between 0 and 1; got {share}")
        name = self._known(request.experiment)
        reason = _reason(request.reason, f"set to {share:g} by an operator")
        with _ended_is_a_precondition():
            self.router.set_share(name, share, reason)
        return self._status(name)

    @answer_errors
    def Rollback(self, request, context):
        name = self._known(request.experiment)
        reason = _reason(request.reason, "rolled back by an operator")
        with _ended_is_a_precondition():
            self.router.end(name, State.ROLLED_BACK, reason)
        return self._status(name)

    @answer_errors
    def Promote(self, request, context):
        name = self._known(request.experiment)
        reason = _reason(request.reason, "promoted by an operator")
        if self._promote is None:
            raise FailedPrecondition("no_repository", "this server serves one --model-dir: "
                                     "there is no repository label to move")
        if self.router.experiments()[name].decided_by == "controller":
            raise FailedPrecondition("controller", f"experiment {name} is decided by the "
                                     "fleet's controller (decided_by: controller): point "
                                     "the baseline's label at the candidate in the shared "
                                     "repository's labels.json, then end the experiment in "
                                     "its file")
        state = self.router.state(name).state
        if state.terminal and state is not State.PROMOTABLE:
            raise FailedPrecondition("ended", f"experiment {name} has ended ({state.value}); "
                                              "a candidate it stopped cannot be promoted")
        self._promote(self.router.experiments()[name])
        with _ended_is_a_precondition():
            self.router.end(name, State.PROMOTABLE, reason)
        return self._status(name)

    def _known(self, name: str) -> str:
        if name not in self.router.experiments():
            known = ", ".join(sorted(self.router.experiments())) or "none"
            raise UnknownModel("unknown_experiment", f"no experiment {shown(name)}; running: "
                                                     f"{known}")
        return name

    def _status(self, name: str) -> pb.ExperimentStatus:
        experiment, state = self.router.experiments()[name], self.router.state(name)
        reason = self.router.reason(name)
        baseline, candidate = self.router.counts(name)
        share = state.candidate_share
        return pb.ExperimentStatus(
            name=name, model=experiment.model, mode=str(experiment.config.mode.value),
            state=state.state.value, reason=reason, candidate_share=share,
            step=state.step_index,
            baseline=_variant(Variant.BASELINE, experiment.baseline, baseline),
            candidate=_variant(Variant.CANDIDATE, experiment.candidate, candidate),
            sequential_p_value=msprt_p_value(baseline.correct, baseline.feedback,
                                             candidate.correct, candidate.feedback),
            srm_p_value=sample_ratio_p_value([baseline.requests, candidate.requests],
                                             [1 - share, share])
            if 0 < share < 1 and baseline.requests + candidate.requests else 1.0,
            shadow=_shadow(self.router.shadow_totals().get(name)))


def _shadow(totals) -> pb.ShadowStatus:
    if totals is None:
        return pb.ShadowStatus()
    nan = math.nan
    return pb.ShadowStatus(
        mirrored=totals.mirrored, dropped=totals.dropped,
        agreement=totals.agreed / totals.mirrored if totals.mirrored else nan,
        mean_confidence_difference=(totals.confidence_difference_sum / totals.mirrored
                                    if totals.mirrored else nan),
        explained=totals.explained,
        mean_map_correlation=(totals.map_correlation_sum / totals.explained
                              if totals.explained else nan),
        mean_top_region_overlap=(totals.top_region_overlap_sum / totals.explained
                                 if totals.explained else nan))


MAX_REASON_CHARS = 256


def _reason(given: str, default: str) -> str:
    """An operator's reason: logged and stored, so one short printable line."""
    if len(given) > MAX_REASON_CHARS or not given.isprintable():
        raise BadRequest("bad_reason", f"reason must be one printable line of at most "
                                       f"{MAX_REASON_CHARS} characters; got {len(given):,} "
                                       "characters")
    return given or default


@contextlib.contextmanager
def _ended_is_a_precondition():
    try:
        yield
    except ExperimentEnded as exc:
        raise FailedPrecondition("ended", str(exc)) from None


def _variant(variant: Variant, spec, counts) -> pb.VariantStatus:
    low, high = (wilson_interval(counts.correct, counts.feedback) if counts.feedback
                 else (math.nan, math.nan))
    return pb.VariantStatus(
        variant=variant.value, version=spec.version or 0, label=spec.label or "",
        requests=counts.requests, errors=counts.errors, feedback=counts.feedback,
        correct=counts.correct, accuracy=counts.accuracy, accuracy_low=low, accuracy_high=high,
        latency_p99_seconds=counts.latency_p99_seconds)
