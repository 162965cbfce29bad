"""Reading a training artifact back: its card, resolved config, dataset split and Keras model.

Evaluation, quantization and the report all start here. The dataset is regenerated from the
config, so the split matches training exactly, because the seed is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from serving.card import ModelCard, load_card
from training.config import Config, load_config
from training.errors import UserError

log = logging.getLogger("sightline.training")

__all__ = ["Artifact", "load_artifact"]


@dataclass
class Artifact:
    path: Path
    card: ModelCard
    config: Config
    dataset: object  # training.data.Dataset
    model: object  # keras.Model, without its optimizer


def load_artifact(path: str | Path) -> Artifact:
    from training.data import load_dataset
    from training.models import load_model

    path = Path(path)
    if not (path / "model.keras").is_file():
        raise UserError(f"{path} is not a training artifact (no model.keras)")
    card = load_card(path)
    config = load_config(path / "config.yaml")
    dataset = load_dataset(config.data, config.seed)
    if dataset.fingerprint() != card.dataset.get("fingerprint"):  # evaluate, quantize, report
        log.warning("the dataset changed since training (fingerprint differs): what is "
                    "measured now describes today's data, not the model's")
    return Artifact(
        path=path,
        card=card,
        config=config,
        dataset=dataset,
        model=load_model(path / "model.keras"),
    )


def write_samples(path: str | Path, out: str | Path, per_class: int = 1) -> list[Path]:
    """The first ``per_class`` validation images of each class, as ``<class>-<n>.png`` in
    ``out``: images the model never trained on, for demos and smoke tests."""
    from PIL import Image

    from training.data import load_dataset

    config = load_config(Path(path) / "config.yaml")
    dataset = load_dataset(config.data, config.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(dataset.class_names):
        for n, row in enumerate((dataset.val_labels == index).nonzero()[0][:per_class]):
            file = out / f"{name}-{n}.png"
            Image.fromarray(dataset.val_images[row]).save(file)
            written.append(file)
    return written
