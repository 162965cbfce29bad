"""Grad-CAM++: channel weights from positive gradients with per-position coefficients alpha.

Chattopadhay et al. 2018, "Grad-CAM++: Improved Visual Explanations for Deep Convolutional
Networks", https://arxiv.org/abs/1710.11063. The closed form below is pytorch-grad-cam's
``GradCAMPlusPlus.get_cam_weights`` (the exponential-score form of the paper's equation 19).
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["GradCAMPlusPlus"]

EPS = 1e-6


class GradCAMPlusPlus(BaseCAM):
    name = "gradcam++"

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        gradients = np.broadcast_to(gradients, activations.shape)  # the sums run over positions
        grads_power_2 = gradients**2
        grads_power_3 = grads_power_2 * gradients
        # Equation 19 in https://arxiv.org/abs/1710.11063
        sum_activations = activations.sum(axis=(1, 2))
        aij = grads_power_2 / (
            2 * grads_power_2 + sum_activations[:, None, None, :] * grads_power_3 + EPS
        )
        # alpha is 0 where the gradient is 0; max(G, 0) is the ReLU of equation 7.
        aij = np.where(gradients != 0, aij, 0.0)
        return (np.maximum(gradients, 0.0) * aij).sum(axis=(1, 2))
