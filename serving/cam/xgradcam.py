"""XGrad-CAM: gradients weighted by the normalised activations (axiom-based Grad-CAM).

Fu et al. 2020, "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
https://arxiv.org/abs/2008.02312
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["XGradCAM"]

EPS = 1e-7


class XGradCAM(BaseCAM):
    name = "xgradcam"

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        # XGrad-CAM weights, https://arxiv.org/abs/2008.02312:
        # alpha_c = sum_ij (A_ij^c / sum_ij A_ij^c) * dy/dA_ij^c
        sum_activations = activations.sum(axis=(1, 2))
        return (gradients * activations).sum(axis=(1, 2)) / (sum_activations + EPS)
