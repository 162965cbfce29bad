"""Small trained artifacts, trained once per session and copied for each test that changes one."""

import shutil

import pytest

from training.config import load_config
from training.train import train

RECIPES = {
    # airbench: global-average-pool head (Grad-CAM from stored head weights)
    "gap": ["model.name=airbench", "model.width=16", "model.l2=0.00005", "optim.name=sgd",
            "optim.learning_rate=0.2", "optim.schedule=cosine", "optim.warmup_epochs=1"],
    # the seed CNN: flatten + dense head (Grad-CAM from an in-graph gradient)
    "dense": ["model.name=basic_cnn", "model.l2=0.0001", "optim.learning_rate=0.003",
              "model.dropout=0.2"],
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """trained(kind) -> path of a fresh copy of a small shapes artifact of that head kind."""
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
