"""Shared test set-up: quiet TensorFlow, small fixtures that build data on disk, and small
trained and quantized artifacts made once per session (training imports TensorFlow only when
a test asks for one)."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/<n>.png with 3 classes x 10 images, each class a distinct colour."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (tmp_path / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 40, (20, 24, 3), dtype=np.uint8)
            pixels[..., c] += 200
            (tmp_path / name / f"{i}.png").write_bytes(encode(pixels))
    return tmp_path


RECIPES = {
    # airbench: global-average-pool head (Grad-CAM from stored head weights)
    "gap": ["model.name=airbench", "model.width=16", "model.l2=0.00005", "optim.name=sgd",
            "optim.learning_rate=0.2", "optim.schedule=cosine", "optim.warmup_epochs=1"],
    # airbench as it measured best on CIFAR-10: a global max pool (Grad-CAM from an in-graph
    # gradient), BatchNorm biases at 64x the learning rate (ScaledBias layers), a whitening
    # bias trained then frozen (FreezableBias) and alternating flip
    "max": ["model.name=airbench", "model.width=16", "model.l2=0.00005", "model.pool=max",
            "model.bias_lr_scale=64", "model.whiten_bias_epochs=2", "augment.alternate_flip=true",
            "optim.name=sgd", "optim.learning_rate=0.2",
            "optim.schedule=cosine", "optim.warmup_epochs=1"],
    # the seed CNN: flatten + dense head (Grad-CAM from an in-graph gradient)
    "dense": ["model.name=basic_cnn", "model.l2=0.0001", "optim.learning_rate=0.003",
              "model.dropout=0.2"],
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(kind) -> path of a fresh copy of a small shapes artifact of that head kind."""
    import tensorflow as tf

    from training.config import load_config
    from training.train import train

    # Threaded reductions made these tiny models differ run to run; one in a few CI runs gave a
    # dense-head model that broke the quantization tests' bounds. Deterministic ops fix the model.
    tf.config.experimental.enable_op_determinism()
    cache = {}

    def get(kind: str):
        if kind not in cache:
            out = tmp_path_factory.mktemp(f"trained-{kind}")
            config = load_config(None, [
                f"output_dir={out}", f"name={kind}", "epochs=6", "batch_size=32",
                "data.num_images=1200", "augment.rotation=0", "augment.zoom=0",
                *RECIPES[kind]])
            cache[kind] = train(config, out / kind)
        copy = tmp_path_factory.mktemp(f"copy-{kind}") / "artifacts"
        shutil.copytree(cache[kind].parent, copy, symlinks=True)  # with its `latest` link
        return copy / kind

    return get


@pytest.fixture(scope="session")
def deployable(trained, tmp_path_factory):
    """deployable(kind) -> a read-only-by-convention int8 artifact (model.tflite, card with
    deployable: true), quantized once per session. Copy it before changing it."""
    cache = {}

    def get(kind: str) -> Path:
        if kind not in cache:
            from training.quantize import quantize_artifact

            artifact = trained(kind)
            quantize_artifact(artifact, ["int8"], representative_size=100, max_drop=100.0)
            cache[kind] = artifact
        return cache[kind]

    return get
