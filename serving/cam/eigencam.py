"""Eigen-CAM: the activations projected on their first principal component; no gradients.

Muhammad & Yeasin 2020, "Eigen-CAM: Class Activation Map using Principal Components",
https://arxiv.org/abs/2008.00299. As pytorch-grad-cam's ``get_2d_projection``: each image's
activations as an (h*w, C) matrix, centred over positions, projected on the first right
singular vector of its SVD. The sign of a singular vector is arbitrary (pytorch-grad-cam leaves
it so, and its map can come out inverted); here it is fixed so that the projection correlates
positively with the mean activation over channels, so evidence is where the features fire.
The map is class-agnostic: gradients, if given, are ignored.
"""

from __future__ import annotations

import numpy as np

from serving.cam.base import BaseCAM

__all__ = ["EigenCAM"]


class EigenCAM(BaseCAM):
    name = "eigencam"
    needs_gradients = False

    def cam(self, activations: np.ndarray, gradients: np.ndarray | None) -> np.ndarray:
        n, h, w, c = activations.shape
        flat = activations.reshape(n, h * w, c)
        centred = flat - flat.mean(axis=1, keepdims=True)
        # The first principal component: vt[:, 0] is each image's top right singular vector.
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        projection = np.einsum("npc,nc->np", centred, vt[:, 0])
        # projection is zero-mean, so its dot product with the mean activation is the covariance.
        sign = np.where(np.einsum("np,np->n", projection, flat.mean(axis=2)) < 0, -1.0, 1.0)
        return np.maximum(projection * sign[:, None], 0.0).reshape(n, h, w)
