"""One TFLite model file run with LiteRT: ``classify``, and ``cam_inputs`` for Grad-CAM.

The file carries signatures written by ``training.quantize``:
- ``classify(image) -> probabilities``;
- ``cam_inputs(image) -> probabilities, activations`` for a global-average-pool head, whose
  gradient is the stored head weights (``cam_head.npy``) divided by h*w at every position; or
  ``cam_inputs(image, class_onehot) -> probabilities, activations, gradients`` for other heads.

Images go in as raw RGB pixels (N, H, W, 3) in 0-255: standardisation is inside the model.
An interpreter is not thread-safe: use one ``TFLiteModel`` per worker thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["TFLiteModel", "load_interpreter_class"]


def load_interpreter_class():
    """LiteRT's interpreter; tflite_runtime's where that is what is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the installed runtime
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class TFLiteModel:
    def __init__(self, model: str | Path | bytes, num_threads: int | None = None):
        interpreter_class = load_interpreter_class()
        if isinstance(model, bytes):
            self._interpreter = interpreter_class(model_content=model, num_threads=num_threads)
        else:
            self._interpreter = interpreter_class(model_path=str(model), num_threads=num_threads)
        self.signatures = set(self._interpreter.get_signature_list())
        if "classify" not in self.signatures:
            raise ValueError(f"model has no 'classify' signature; it has {sorted(self.signatures)}")
        self._runners = {key: self._interpreter.get_signature_runner(key)
                         for key in self.signatures}
        # Details are read once: get_*_details() builds fresh dicts on every call (~10 us each).
        self._inputs = {key: runner.get_input_details() for key, runner in self._runners.items()}
        self._outputs = {key: runner.get_output_details() for key, runner in self._runners.items()}
        self.input_dtype = self._inputs["classify"]["image"]["dtype"]
        self.input_shape = tuple(int(d) for d in self._inputs["classify"]["image"]["shape"][1:])
        self.num_classes = int(self._outputs["classify"]["probabilities"]["shape"][-1])
        self.cam_needs_target = ("cam_inputs" in self._inputs
                                 and "class_onehot" in self._inputs["cam_inputs"])

    def classify(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) pixels -> (N, classes) float32 probabilities."""
        out = self._runners["classify"](image=self._image(images, "classify"))
        return self._float(out["probabilities"], "classify", "probabilities")

    def cam_inputs(self, images: np.ndarray, class_onehot: np.ndarray | None = None):
        """-> (probabilities (N, K), activations (N, h, w, C), gradients (N, h, w, C) or None)."""
        runner = self._runners["cam_inputs"]
        inputs = {"image": self._image(images, "cam_inputs")}
        if self.cam_needs_target:
            if class_onehot is None:
                raise ValueError("this model's cam_inputs needs class_onehot")
            inputs["class_onehot"] = self._quantize(
                np.asarray(class_onehot, np.float32), self._inputs["cam_inputs"]["class_onehot"])
        out = runner(**inputs)
        gradients = out.get("gradients")
        return (
            self._float(out["probabilities"], "cam_inputs", "probabilities"),
            self._float(out["activations"], "cam_inputs", "activations"),
            None if gradients is None else self._float(gradients, "cam_inputs", "gradients"),
        )

    def _image(self, images: np.ndarray, signature: str) -> np.ndarray:
        """Pixels as this signature's input tensor wants them (each has its own quantization)."""
        return self._quantize(np.asarray(images), self._inputs[signature]["image"])

    @staticmethod
    def _quantize(values: np.ndarray, details: dict) -> np.ndarray:
        dtype = details["dtype"]
        if dtype == np.float32:
            return values.astype(np.float32, copy=False)
        scale, zero_point = details["quantization"]
        if values.dtype == dtype and scale == 1.0 and zero_point == 0:
            return values
        info = np.iinfo(dtype)
        quantized = np.round(values.astype(np.float32) / (scale or 1.0) + zero_point)
        return np.clip(quantized, info.min, info.max).astype(dtype)

    def _float(self, values: np.ndarray, signature: str, name: str) -> np.ndarray:
        if values.dtype == np.float32:
            return values
        details = self._outputs[signature][name]
        scale, zero_point = details["quantization"]
        return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)
