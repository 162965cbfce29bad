"""Class activation maps for the serving path: a registry of methods by name.

``get_method(name)`` returns a ready ``BaseCAM``; calling it with a batch's (N, h, w, C)
activations and gradients gives (N, h, w) float32 maps in [0, 1] (see ``base``). The methods
follow pytorch-grad-cam and use numpy only: no TensorFlow or Keras is imported here.
"""

from __future__ import annotations

from serving.cam.base import BaseCAM
from serving.cam.eigencam import EigenCAM
from serving.cam.gradcam import GradCAM
from serving.cam.gradcam_plusplus import GradCAMPlusPlus
from serving.cam.hirescam import HiResCAM
from serving.cam.layercam import LayerCAM
from serving.cam.xgradcam import XGradCAM

__all__ = ["METHODS", "BaseCAM", "get_method"]

METHODS: dict[str, type[BaseCAM]] = {
    method.name: method
    for method in (GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, EigenCAM)
}


def get_method(name: str) -> BaseCAM:
    """A new instance of the CAM method registered as ``name``."""
    try:
        return METHODS[name]()
    except KeyError:
        raise ValueError(f"unknown CAM method {name!r}; known: {', '.join(METHODS)}") from None
