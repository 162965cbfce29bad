"""Grad-CAM parity of each TFLite variant with a TensorFlow GradientTape reference.

    .venv/bin/python benchmarks/cam_parity.py ARTIFACT [--images 500]

The reference is ``training.cam_export.reference_cam_inputs`` (the keras-io Grad-CAM method) on
the Keras model, rebuilt in float32. The served side goes through the server's own code
(``serving.runtime.explain`` and ``serving.cam``). The script prints the Pearson r of each
image's map and the largest absolute difference. Maps in [0, 1], Grad-CAM, targets = true labels.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from serving.cam import get_method  # noqa: E402
from serving.cam.faithfulness import map_correlation  # noqa: E402
from serving.runtime.explain import activations_and_gradients, load_head_weights  # noqa: E402
from serving.runtime.interpreter import TFLiteModel  # noqa: E402


def main() -> None:
    from training.artifact import load_artifact
    from training.cam_export import reference_cam_inputs
    from training.quantize import float32_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    artifact = load_artifact(args.artifact)
    images = artifact.dataset.val_images[: args.images]
    targets = artifact.dataset.val_labels[: args.images]
    model = float32_model(artifact.model, artifact.config, artifact.card)
    reference = get_method("gradcam")(*reference_cam_inputs(model, images, targets))
    informative = reference.std(axis=(1, 2)) > 0
    weights = load_head_weights(args.artifact, artifact.card)
    print(f"{'variant':<8} {'mean r':>8} {'min r':>8} {'max |d|':>8} flat ({informative.sum()} "
          f"informative reference maps of {len(images)})")
    for mode, variant in artifact.card.quantization.variants.items():
        model = TFLiteModel(args.artifact / variant.file)
        _, activations, gradients, _ = activations_and_gradients(model, images, targets, weights)
        served = get_method("gradcam")(activations, gradients)[informative]
        flat = served.std(axis=(1, 2)) == 0
        r = map_correlation(served[~flat], reference[informative][~flat])
        error = np.abs(served - reference[informative]).max()
        print(f"{mode:<8} {r.mean():>8.5f} {r.min():>8.5f} {error:>8.2e} {flat.sum()}")


if __name__ == "__main__":
    main()
