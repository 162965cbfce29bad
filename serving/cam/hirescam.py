"""HiResCAM: the gradient times the activation at every position, summed over channels.

Draelos & Carin 2020, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", https://arxiv.org/abs/2011.08891. Unlike Grad-CAM it does not
average the gradients over positions, so the map is exactly where the score's gradient
meets the activations.
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["HiResCAM"]


class HiResCAM(BaseCAM):
    name = "hirescam"

    def cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        # HiResCAM, https://arxiv.org/abs/2011.08891: relu(sum_c dy/dA^c (.) A^c)
        return np.maximum((gradients * activations).sum(axis=3), 0.0)
