"""The serving data path, top to bottom: id → model → decode → batch → interpreter → CAM → result.

Both APIs (``api.classifier`` for Sightline's own, ``api.oip`` for the Open Inference Protocol)
call ``Inference.submit`` then ``finish``; nothing here knows about gRPC messages. One request:

1. get its request id (the client's, checked, or a new one);
2. ask the router (``routing.Router``) whether an experiment answers it, and which variant;
3. pick the servable (name, version or label) and hold it, so a reload cannot unload it
   mid-request; a routed request whose candidate is not loaded gets the baseline;
4. decode the bytes safely, or check the raw tensor, to the model's (H, W, 3) input;
5. submit to the servable's dynamic batcher, with the request's deadline, and wait;
   a batcher worker runs the batch on its own interpreter (``inference.runner``), computing
   CAM maps for the whole batch at the feature map's size;
6. upsample and render the heatmap for this request (PNG overlay and/or raw map); a routed
   request's outcome goes to the router, which signs its request id for late labels.

Every failure leaves as a ``serving.errors.ServingError``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import numpy as np

from serving.batching.batcher import BatcherClosed, DeadlineExpired, QueueFull
from serving.cam import METHODS, render
from serving.errors import (
    BadRequest,
    Cancelled,
    DeadlineExceeded,
    ModelUnavailable,
    Overloaded,
    ServingError,
    UnknownModel,
    shown,
)
from serving.image.decode import DecodeLimits, InputError, decode, tensor_to_input
from serving.inference.observer import NO_OBSERVER, Observer
from serving.inference.shadow import Shadow
from serving.inference.types import (
    DEFAULT_TOP_K,
    MAX_ID_CHARS,
    BatchOutput,
    Explain,
    Heatmap,
    Result,
    Timing,
    request_id_for,
)
from serving.repository.manager import ModelManager, ModelNotFound
from serving.repository.servable import Servable
from serving.routing.assignment import Variant
from serving.routing.decide import Mode
from serving.routing.router import Route, Router

__all__ = ["Inference", "Pending"]

log = logging.getLogger("sightline.requests")


@dataclass
class Pending:
    """A submitted request: what ``finish`` needs. It holds its servable (acquired in
    ``submit``, released in ``finish``), so a reload cannot unload it in between."""

    request_id: str
    servable: Servable
    pixels: np.ndarray
    explain: Explain | None
    top_k: int
    deadline: float | None
    future: Future
    timing: Timing
    started: float
    input_bytes: int | None = None  # encoded size, for metrics
    input_pixels: int | None = None  # width x height as sent
    route: Route | None = None  # the experiment and variant, when one routed it


class Inference:
    """The path from request to ``Result``, over the servables of ``manager``."""

    def __init__(self, manager: ModelManager, *, limits: DecodeLimits | None = None,
                 default_model: str = "", observer: Observer = NO_OBSERVER,
                 max_decodes: int = 4, router: Router | None = None,
                 shadow: Shadow | None = None):
        self.manager = manager
        self.router = router
        self.shadow = shadow  # copies for shadow experiments' candidates
        # Metrics wrap the path through these hooks; requests in flight are the servables'
        # holders, counted at scrape time.
        self.observer = observer
        self._default_model = default_model
        self.limits = limits or DecodeLimits()
        # Decoding a big image peaks near 100 MB: a bound on how many decode at once bounds the
        # memory a flood of small files that decode big can take.
        self._decodes = threading.BoundedSemaphore(max_decodes)

    def submit(self, *, request_id: str = "", name: str = "", version: int | None = None,
               label: str | None = None, image: bytes | None = None,
               tensor: tuple[bytes, list[int], str] | None = None, top_k: int | None = None,
               explain: Explain | None = None, deadline: float | None = None,
               on_cancel: Callable[[Callable[[], None]], None] | None = None,
               metadata: Mapping[str, str] | None = None, count: bool = True) -> Pending:
        """Check, decode and queue a request; ``finish`` waits for it. ``deadline`` is
        time.monotonic() seconds; ``on_cancel(callback)`` registers what to call if the client
        goes away; ``metadata`` holds the call's headers, where an experiment's sticky key is;
        ``count`` False routes the request without counting it (an OIP request's images after
        its first: one request, one count). Streams submit many before finishing any, so
        batches fill."""
        started = time.perf_counter()
        servable = route = None
        try:
            rid = request_id_for(request_id)
            if version is None and label is None and self.routes:
                route = self._route(name, rid, metadata)
            if route is not None:
                servable = self._acquire_variant(route)
                if servable is None:  # the candidate is not loaded: the baseline answers
                    route = self.router.fall_back(route)
                    servable = self._acquire_variant(route)
            else:
                servable = self._lookup(self.manager.acquire, name, version, label)
            card = servable.card
            top_k = self._top_k(top_k, card.num_classes)
            if explain is not None:
                self._check_explain(explain, card.num_classes)
            pixels, input_pixels = self._decode(image, tensor, card.input.height,
                                                card.input.width, deadline)
            decoded = time.perf_counter()
            future = self._submit(servable, pixels, explain, deadline)
        except BaseException as exc:
            if servable is not None:
                servable.release()
            if isinstance(exc, ServingError):
                self.observer.rejected_request(exc.reason, type(exc).__name__)
                exc.counted = True
            self._count_failure(route if count else None, exc, started)
            raise
        if on_cancel is not None:
            on_cancel(future.cancel)
        return Pending(rid, servable, pixels, explain, top_k, deadline, future,
                       Timing(decode_seconds=decoded - started), started,
                       None if image is None else len(image), input_pixels,
                       route if count else None)

    def finish(self, pending: Pending) -> tuple[Result, int]:
        """Wait for a submitted request (up to its deadline), render its heatmap, release the
        servable. -> (result, how many classes to answer)."""
        try:
            result = self._finish(pending)
        except BaseException as exc:
            if isinstance(exc, ServingError):
                self.observer.rejected_request(exc.reason, type(exc).__name__)
                exc.counted = True
            self._count_failure(pending.route, exc, pending.started)
            raise
        finally:
            pending.servable.release()
        if pending.route is not None:
            self._count_routed(pending.route, result)
            if self.shadow is not None and pending.route.experiment.config.mode is Mode.SHADOW:
                self.shadow.offer(pending.route, pending.pixels, result)
        self.observer.request_done(result, pending.servable.card.labels, pending.input_bytes,
                                   pending.input_pixels)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: %s v%d class %d in %.1f ms", result.request_id,
                      result.model_name, result.model_version, result.top_class,
                      result.timing.total_seconds * 1000)
        return result, pending.top_k

    def _finish(self, pending: Pending) -> Result:
        output = self._wait(pending)
        servable = pending.servable
        result = Result(pending.request_id, servable.name, servable.version,
                        servable.card.labels, output.probabilities)
        explain_started = time.perf_counter()
        if pending.explain is not None:
            result.heatmap = self._render(pending.pixels, output, pending.explain)
        done = time.perf_counter()
        result.timing = pending.timing
        result.timing.queue_seconds = output.queue_seconds
        result.timing.inference_seconds = output.inference_seconds
        result.timing.explain_seconds = done - explain_started
        result.timing.total_seconds = done - pending.started
        return result

    @property
    def routes(self) -> bool:
        """Whether any experiment runs (the APIs pass the call's headers only then)."""
        return self.router is not None and self.router.active

    def _route(self, name: str, request_id: str, metadata) -> Route | None:
        model = name or self.default_model()
        experiment = self.router.experiment_for(model)
        if experiment is None:
            return None
        key = request_id
        if experiment.sticky_key is not None and metadata:
            key = metadata.get(experiment.sticky_key) or request_id
        return self.router.route(model, key)

    def _acquire_variant(self, route: Route) -> Servable | None:
        """The routed variant's servable; None for a candidate that is not loaded (it was
        unloaded, or failed to load), so that the client never sees the experiment's trouble."""
        spec = route.spec
        try:
            return self._lookup(self.manager.acquire, route.experiment.model, spec.version,
                                spec.label)
        except UnknownModel:
            if route.variant is Variant.BASELINE:
                raise
            return None

    def _count_routed(self, route: Route, result: Result) -> None:
        result.feedback_id = self.router.finished(route, True, result.timing.total_seconds,
                                                  result.top_class)
        result.experiment, result.variant = route.experiment.name, route.variant.value

    def _count_failure(self, route: Route | None, exc: BaseException, started: float) -> None:
        """A routed request that failed inside the server (a bug, a broken model) counts
        against its variant. An expected refusal does not: a bad request, a deadline the client
        chose, a full queue or an unloading version says nothing about the model, and counting
        them would let one client roll any candidate back with short deadlines."""
        if route is not None and not isinstance(exc, ServingError):
            self.router.finished(route, False, time.perf_counter() - started, None)

    def servable(self, name: str = "", version: int | None = None,
                 label: str | None = None) -> Servable:
        """The servable a request names (the default model when ``name`` is empty), for a
        metadata answer; requests that run hold theirs with ``submit``. An experiment's name
        gives its baseline."""
        experiment = (self.router.experiment_for(name) if self.router is not None and name
                      and version is None and label is None else None)
        if experiment is not None and experiment.name == name:
            name, version, label = (experiment.model, experiment.baseline.version,
                                    experiment.baseline.label)
        return self._lookup(self.manager.get, name, version, label)

    def _lookup(self, find, name: str, version, label) -> Servable:
        if version is not None and label is not None:
            raise BadRequest("bad_model_spec", "give a model version or a label, not both")
        for what, value in (("model name", name), ("label", label or "")):
            if len(value) > MAX_ID_CHARS:
                raise BadRequest("bad_model_spec", f"the {what} is {len(value):,} characters; "
                                                   f"at most {MAX_ID_CHARS}")
        try:
            return find(name or self.default_model(), version, label)
        except ModelNotFound as exc:
            raise UnknownModel("unknown_model", str(exc)) from None

    def default_model(self) -> str:
        """The model a request without a name gets: the configured one, else the only one."""
        if self._default_model:
            return self._default_model
        served = sorted(self.manager.models())
        if not served:
            raise ModelUnavailable("not_ready", "no model is loaded yet")
        if len(served) > 1:
            raise BadRequest("no_model_name", f"name a model; this server serves "
                                              f"{', '.join(served)}")
        return served[0]

    @staticmethod
    def _top_k(top_k: int | None, classes: int) -> int:
        if top_k is None:
            return min(DEFAULT_TOP_K, classes)
        if not 1 <= top_k <= classes:
            raise BadRequest("bad_top_k", f"top_k must be between 1 and the model's {classes} "
                                          f"classes; got {top_k}")
        return top_k

    @staticmethod
    def _check_explain(explain: Explain, classes: int) -> None:
        if explain.method not in METHODS:
            raise BadRequest("unknown_cam_method", f"unknown CAM method {shown(explain.method)}; "
                                                   f"known: {', '.join(METHODS)}")
        if explain.target is not None and not 0 <= explain.target < classes:
            raise BadRequest("bad_target_class", f"target_class must be between 0 and "
                                                 f"{classes - 1}; got {explain.target}")
        if not (explain.png or explain.raw):
            raise BadRequest("bad_explain", "an explanation needs png_overlay or raw_map")

    def _decode(self, image, tensor, height, width, deadline) -> tuple[np.ndarray, int]:
        """-> ((H, W, 3) model input, width x height of the input as sent). Encoded images
        wait for a decode slot until the deadline; none is decoded after it."""
        try:
            if image is not None:
                timeout = None if deadline is None else deadline - time.monotonic()
                # acquire(timeout=0) still takes a free slot: a late image would be decoded
                if (timeout is not None and timeout <= 0) or not self._decodes.acquire(
                        timeout=timeout):
                    raise DeadlineExceeded("deadline", "the deadline passed before the image "
                                                       "could be decoded")
                try:
                    return decode(image, height, width, self.limits)
                finally:
                    self._decodes.release()
            if tensor is not None:
                return tensor_to_input(*tensor, height, width), height * width
        except InputError as exc:
            raise BadRequest(exc.reason, str(exc)) from None
        raise BadRequest("no_input", "the request has neither image bytes nor a tensor")

    @staticmethod
    def _submit(servable: Servable, pixels, explain, deadline) -> Future:
        kind = "classify" if explain is None else "explain"
        target = None if explain is None else (explain.target, explain.method)
        try:
            return servable.batcher.submit(kind, pixels, target, deadline)
        except QueueFull:
            raise Overloaded("queue_full", "the server is at capacity (batch queue full); "
                                           "retry with backoff") from None
        except DeadlineExpired:
            raise DeadlineExceeded("deadline", "the deadline passed before the request "
                                               "was queued") from None
        except BatcherClosed:
            raise ModelUnavailable("closing", f"model version {servable.version} is "
                                              "unloading; retry") from None

    @staticmethod
    def _wait(pending: Pending) -> BatchOutput:
        deadline = pending.deadline
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return pending.future.result(timeout)
        except FutureTimeout:
            pending.future.cancel()
            raise DeadlineExceeded("deadline", "the deadline passed while the request "
                                               "waited") from None
        except DeadlineExpired:
            raise DeadlineExceeded("deadline", "the deadline passed in the queue; the "
                                               "request was not run") from None
        except CancelledError:
            raise Cancelled("cancelled", "the client cancelled the request") from None
        except BatcherClosed:
            raise ModelUnavailable("closing", "the server is shutting down; retry") from None

    @staticmethod
    def _render(pixels: np.ndarray, output: BatchOutput, explain: Explain) -> Heatmap:
        height, width = pixels.shape[:2]
        upsampled = render.upsample(output.cam[None], height, width)[0]
        png = None
        if explain.png:
            image = pixels if pixels.dtype == np.uint8 else np.rint(pixels).astype(np.uint8)
            png = render.to_png(render.overlay(image, upsampled))
        return Heatmap(explain.method, output.target, png, upsampled if explain.raw else None)
