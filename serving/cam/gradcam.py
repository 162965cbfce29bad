"""Grad-CAM: each channel weighted by its gradient averaged over the feature map.

Selvaraju et al. 2017, "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", https://arxiv.org/abs/1610.02391
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["GradCAM"]


class GradCAM(BaseCAM):
    name = "gradcam"

    def channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        # Equation 1 in https://arxiv.org/abs/1610.02391: alpha_c = 1/Z sum_ij dy/dA_ij^c
        return gradients.mean(axis=(1, 2))
