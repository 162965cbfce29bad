"""The serving data path, top to bottom: model → decode → batch → interpreter → CAM → result.

Both APIs (``service.py`` for Sightline's own, ``oip.py`` for the Open Inference Protocol) call
``Inference.submit`` then ``finish``; nothing here knows about gRPC messages. One request:

1. pick the servable (name, version or label) and hold it, so a reload cannot unload it mid-request;
2. decode the bytes safely, or check the raw tensor, to the model's (H, W, 3) input;
3. submit to the servable's dynamic batcher, with the request's deadline, and wait;
   a batcher worker stacks a batch and runs its own interpreter (``_BatchRunner``), computing
   CAM maps for the whole batch at the feature map's size;
4. upsample and render the heatmap for this request (PNG overlay and/or raw map).

Every failure leaves as a ``serving.errors.ServingError``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching.batcher import BatcherClosed, DeadlineExpired, DynamicBatcher, Job, QueueFull
from serving.cam import METHODS, get_method, render
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
from serving.observe.drift import DriftMonitor
from serving.reference_stats import brightness
from serving.repository.loader import LoadError, load_servable
from serving.repository.manager import ModelManager, ModelNotFound
from serving.repository.servable import Servable
from serving.runtime.explain import activations_and_gradients

__all__ = ["BatchingConfig", "Explain", "Heatmap", "Inference", "Pending", "Result", "Timing",
           "deadline_after", "MAX_ID_CHARS"]

DEFAULT_TOP_K = 5
MAX_ID_CHARS = 128  # request ids, model names and labels: longer ones are refused, not echoed


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    workers: int = 2  # LiteRT's invoke releases the GIL: one thread per core scales (ARCHITECTURE)
    wait_when_idle: bool = False


@dataclass(frozen=True)
class Explain:
    method: str = "gradcam"
    target: int | None = None  # None: the top-1 class
    png: bool = True
    raw: bool = False


@dataclass
class Timing:
    decode_seconds: float = 0.0
    queue_seconds: float = 0.0
    inference_seconds: float = 0.0
    explain_seconds: float = 0.0
    total_seconds: float = 0.0


@dataclass
class Heatmap:
    method: str
    target: int
    png: bytes | None
    raw: np.ndarray | None  # (H, W) float32 in [0, 1]


@dataclass
class Result:
    model_name: str
    model_version: int
    labels: list[str]
    probabilities: np.ndarray  # (K,) float32
    heatmap: Heatmap | None = None
    timing: Timing = field(default_factory=Timing)
    brightness: float | None = None  # mean luma of the model input, for drift (when tracked)

    @property
    def top_class(self) -> int:
        return int(self.probabilities.argmax())

    def top(self, k: int) -> list[tuple[int, str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), self.labels[i], float(self.probabilities[i])) for i in order]


@dataclass
class Pending:
    """A submitted request: what ``finish`` needs. It holds its servable (acquired in
    ``submit``, released in ``finish``), so a reload cannot unload it in between."""

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


def deadline_after(remaining: float | None) -> float | None:
    """gRPC's ``time_remaining()`` (seconds, or None / a huge number without a deadline) -> a
    time.monotonic() deadline or None."""
    if remaining is None or remaining > 365 * 24 * 3600:
        return None
    return time.monotonic() + remaining


class Inference:
    """The path from request to ``Result``; holds one dynamic batcher per loaded servable."""

    def __init__(self, manager: ModelManager | None, batching: BatchingConfig | None = None,
                 limits: DecodeLimits | None = None, default_model: str = "",
                 observer: Any = None, drift: tuple[int, int] | None = (1000, 500),
                 max_decodes: int = 4):
        self.manager = manager  # None until the server wires it: its loader is ``self.loader``
        # Metrics wrap the path through these hooks (observe.metrics.ServingMetrics); requests
        # in flight are the servables' holders, counted at scrape time.
        self.observer = observer if observer is not None else _NoObserver()
        self.drift = drift  # (window, min_samples) of each version's drift monitor; None: off
        self._default_model = default_model
        self.batching = batching or BatchingConfig()
        self.limits = limits or DecodeLimits()
        # Decoding a big image peaks near 100 MB: a bound on how many decode at once bounds the
        # memory a flood of small files that decode big can take.
        self._decodes = threading.BoundedSemaphore(max_decodes)
        self._lock = threading.Lock()

    def submit(self, *, name: str = "", version: int | None = None, label: str | None = None,
               image: bytes | None = None, tensor: tuple[bytes, list[int], str] | None = None,
               top_k: int | None = None, explain: Explain | None = None,
               deadline: float | None = None,
               on_cancel: Callable[[Callable[[], None]], None] | None = None) -> Pending:
        """Check, decode and queue a request; ``finish`` waits for it. ``deadline`` is
        time.monotonic() seconds; ``on_cancel(callback)`` registers what to call if the client
        goes away. Streams submit many before finishing any, so batches fill."""
        started = time.perf_counter()
        servable = None
        try:
            servable = self._acquire(name, version, label)
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
            raise
        if on_cancel is not None:
            on_cancel(future.cancel)
        return Pending(servable, pixels, explain, top_k, deadline, future,
                       Timing(decode_seconds=decoded - started), started,
                       None if image is None else len(image), input_pixels)

    def finish(self, pending: Pending) -> tuple[Result, int]:
        """Wait for a submitted request (up to its deadline), render its heatmap, release the
        servable."""
        try:
            result = self._finish(pending)
        except ServingError as exc:
            self.observer.rejected_request(exc.reason, type(exc).__name__)
            raise
        finally:
            pending.servable.release()
        self.observer.request_done(pending.servable, result, pending.pixels,
                                   pending.input_bytes, pending.input_pixels)
        return result, pending.top_k

    def _finish(self, pending: Pending) -> Result:
        probabilities, cam, target, inference_seconds, queue_seconds, luma = self._wait(pending)
        servable = pending.servable
        result = Result(servable.name, servable.version, servable.card.labels, probabilities,
                        brightness=luma)
        explain_started = time.perf_counter()
        if pending.explain is not None:
            result.heatmap = self._render(pending.pixels, cam, target, pending.explain)
        done = time.perf_counter()
        result.timing = pending.timing
        result.timing.queue_seconds = queue_seconds
        result.timing.inference_seconds = inference_seconds
        result.timing.explain_seconds = done - explain_started
        result.timing.total_seconds = done - pending.started
        return result

    def batcher(self, servable: Servable) -> DynamicBatcher:
        """The servable's batcher, made on first use; closed (drained) when it is unloaded."""
        batcher = servable.resources.get("batcher")
        if batcher is not None:
            return batcher
        with self._lock:
            batcher = servable.resources.get("batcher")
            if batcher is None:
                sizes = tuple(sorted({1, self.batching.max_batch_size}))
                batcher = DynamicBatcher(
                    lambda: _BatchRunner(servable, sizes),
                    max_batch_size=self.batching.max_batch_size,
                    max_queue_delay_s=self.batching.max_queue_delay_s,
                    max_queue_size=self.batching.max_queue_size,
                    workers=self.batching.workers,
                    name=f"{servable.name}-v{servable.version}",
                    wait_when_idle=self.batching.wait_when_idle,
                )
                batcher.on_batch = lambda kind, size: self.observer.batch(servable.name, size)
                batcher.on_late = lambda kind, n: self.observer.late_results(servable.name, n)
                servable.resources["batcher"] = batcher
                servable.on_unload.append(lambda: batcher.close(drain=True))
        return batcher

    def servable(self, name: str = "", version: int | None = None,
                 label: str | None = None) -> Servable:
        """The servable a request names (the default model when ``name`` is empty), for a
        metadata answer; requests that run hold theirs with ``submit``."""
        return self._lookup(self.manager.get, name, version, label)

    def _acquire(self, name: str, version, label) -> Servable:
        return self._lookup(self.manager.acquire, name, version, label)

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

    def loader(self, open_model: Callable[[Path], Any]) -> Callable[[str, int, Path], Servable]:
        """The repository's loader: load and verify a version, then start its batcher, whose
        workers open and warm their own interpreters, before the manager publishes it."""

        def load(name: str, version: int, path: Path) -> Servable:
            servable = load_servable(name, version, path, open_model=open_model)
            try:
                self.batcher(servable)
            except Exception as exc:
                raise LoadError(f"cannot start the batcher's interpreters: {exc}") from exc
            reference = servable.card.reference
            if reference is not None and self.drift is not None:
                window, min_samples = self.drift
                servable.resources["drift"] = DriftMonitor(
                    reference, servable.card.num_classes, window=window, min_samples=min_samples)
            return servable

        return load

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
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._decodes.acquire(timeout=timeout):
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

    def _submit(self, servable, pixels, explain, deadline):
        kind = "classify" if explain is None else "explain"
        target = None if explain is None else (explain.target, explain.method)
        try:
            return self.batcher(servable).submit(kind, pixels, target, deadline)
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
    def _wait(pending: Pending):
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
    def _render(pixels: np.ndarray, cam: np.ndarray, target: int, explain: Explain) -> Heatmap:
        height, width = pixels.shape[:2]
        upsampled = render.upsample(cam[None], height, width)[0]
        png = None
        if explain.png:
            image = pixels if pixels.dtype == np.uint8 else np.rint(pixels).astype(np.uint8)
            png = render.to_png(render.overlay(image, upsampled))
        return Heatmap(explain.method, target, png, upsampled if explain.raw else None)


class _BatchRunner:
    """Runs batches in one batcher worker thread, with that thread's own interpreter."""

    def __init__(self, servable: Servable, warmup_batch_sizes: tuple[int, ...]):
        self.model = servable.model_factory()
        self.head_weights = servable.head_weights
        self.servable = servable
        card = servable.card
        for size in warmup_batch_sizes:  # the first call at a size allocates its tensors
            self.model.classify(np.zeros((size, card.input.height, card.input.width, 3), np.uint8))

    def __call__(self, kind: str, jobs: list[Job]) -> list[tuple]:
        images = np.stack([job.inputs for job in jobs])  # (N, H, W, 3)
        # Drift needs each input's mean luma: one numpy call per batch, not one per request.
        lumas = (brightness(images).tolist() if "drift" in self.servable.resources
                 else [None] * len(jobs))
        started = time.perf_counter()
        if kind == "classify":
            probabilities = self.model.classify(images)
            seconds = time.perf_counter() - started
            return [(p, None, int(p.argmax()), seconds, job.started - job.enqueued, luma)
                    for p, job, luma in zip(probabilities, jobs, lumas, strict=True)]
        wanted = np.array([-1 if job.target[0] is None else job.target[0] for job in jobs])
        probabilities, activations, gradients, targets = activations_and_gradients(
            self.model, images, wanted, self.head_weights)
        maps = np.empty(activations.shape[:3], dtype=np.float32)  # (N, h, w)
        methods = np.array([job.target[1] for job in jobs])
        for method in set(methods.tolist()):
            rows = np.flatnonzero(methods == method)
            grads = gradients if gradients is None or len(rows) == len(jobs) else gradients[rows]
            acts = activations if len(rows) == len(jobs) else activations[rows]
            maps[rows] = get_method(method)(acts, grads)
        seconds = time.perf_counter() - started
        return [(p, m, int(t), seconds, job.started - job.enqueued, luma)
                for p, m, t, job, luma in zip(probabilities, maps, targets, jobs, lumas,
                                              strict=True)]


class _NoObserver:
    """Stands in when no metrics are wanted: every hook does nothing."""

    def __getattr__(self, name):
        return _nothing


def _nothing(*args, **kwargs) -> None:
    return None
