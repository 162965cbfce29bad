"""LayerCAM: positive gradients times the activations at every position, summed over channels.

Jiang et al. 2021, "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
IEEE TIP 30, http://mftp.mmcheng.net/Papers/21TIP_LayerCAM.pdf
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["LayerCAM"]


class LayerCAM(BaseCAM):
    name = "layercam"

    def cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        # LayerCAM: w_ij^c = relu(dy/dA_ij^c); M = relu(sum_c w^c (.) A^c)
        return np.maximum((np.maximum(gradients, 0.0) * activations).sum(axis=3), 0.0)
