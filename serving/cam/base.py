"""BaseCAM: turn a batch of feature maps and their gradients into class activation maps.

The contract, after pytorch-grad-cam's ``base_cam.py``: the model call happens elsewhere and
hands over, for a batch of N images, the activations ``A`` of the CAM layer (usually the last
convolution), shaped (N, h, w, C) channels-last, and the gradients ``G`` of each image's target
class score with respect to ``A``, the same shape or (N, 1, 1, C) when the gradient is the same
at every position, as under a global-average-pool head (``None`` for gradient-free methods).
Calling a method, ``method(A, G)``, returns (N, h, w) float32 maps in [0, 1], one per image,
each computed independently of the rest of the batch; bad shapes, missing gradients and
non-finite values raise ValueError.

A method overrides one hook: ``channel_weights`` (N, C) for the weighted-sum family
(Grad-CAM, Grad-CAM++, XGrad-CAM), or ``cam`` (N, h, w) for the rest. Arithmetic is float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BaseCAM"]

# A map whose max - min is below this fraction of its max is flat (float32 noise): all zeros.
FLAT = 1e-6


class BaseCAM:
    """A CAM method; subclasses set ``name`` and override ``channel_weights`` or ``cam``."""

    name: str
    needs_gradients: bool = True

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """(N, C) importance of each channel for each image's target class."""
        raise NotImplementedError(f"{type(self).__name__} must override channel_weights or cam")

    def cam(self, activations: np.ndarray, gradients: np.ndarray | None) -> np.ndarray:
        """(N, h, w) raw map: relu(sum_c weights[n, c] * A[n, :, :, c])."""
        weights = self.channel_weights(activations, gradients)
        return np.maximum(np.matmul(activations, weights[:, None, :, None])[..., 0], 0.0)

    def __call__(self, activations: np.ndarray, gradients: np.ndarray | None = None) -> np.ndarray:
        """(N, h, w) float32 in [0, 1]: cam -> relu -> per-image min-max scaling."""
        activations, gradients = self._validate(activations, gradients)
        maps = np.maximum(self.cam(activations, gradients), 0.0)
        low = maps.min(axis=(1, 2), keepdims=True)
        high = maps.max(axis=(1, 2), keepdims=True)
        span = high - low
        scaled = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > FLAT * high)
        return scaled.astype(np.float32)

    def _validate(
        self, activations: np.ndarray, gradients: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        activations = np.asarray(activations, dtype=np.float64)
        if activations.ndim != 4 or 0 in activations.shape:
            raise ValueError(
                "activations must be a non-empty 4-D (N, h, w, C) channels-last array; "
                f"got shape {activations.shape}"
            )
        if not np.isfinite(activations).all():
            raise ValueError("activations contain NaN or infinite values")
        if gradients is None:
            if self.needs_gradients:
                raise ValueError(f"CAM method {self.name!r} needs gradients; got None")
            return activations, None
        gradients = np.asarray(gradients, dtype=np.float64)
        n, _, _, c = activations.shape
        if gradients.shape not in (activations.shape, (n, 1, 1, c)):
            raise ValueError(
                f"gradients shape {gradients.shape} != activations shape {activations.shape} "
                f"(or {(n, 1, 1, c)} for a gradient constant over positions)"
            )
        if not np.isfinite(gradients).all():
            raise ValueError("gradients contain NaN or infinite values")
        return activations, gradients
