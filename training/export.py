"""The one writer of a training artifact: ``artifacts/<run>/``.

Contents: ``model.keras`` (the trained model), ``config.yaml`` (the resolved config, enough to
repeat the run), ``history.json`` / ``history.csv`` (per-epoch metrics and learning rate),
``logs/`` (TensorBoard), and ``card.json`` — the model card that serving reads
(``serving.card``). ``artifacts/latest`` points at the newest run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import yaml

from serving.card import FileEntry, InputSpec, ModelCard, ModelSpec, save_card
from serving.reference_stats import reference_stats
from training import models
from training.cam_export import head_kind
from training.config import Config

__all__ = ["new_artifact_dir", "write_artifact"]


def new_artifact_dir(config: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(config.output_dir) / f"{config.name}-{stamp}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def write_artifact(artifact_dir: Path, *, model, config: Config, dataset, history: dict,
                   metrics: dict, probabilities: np.ndarray, normalization: dict,
                   training: dict) -> ModelCard:
    artifact_dir.mkdir(parents=True, exist_ok=True)
    model.save(artifact_dir / "model.keras")
    (artifact_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (artifact_dir / "history.json").write_text(json.dumps(
        {key: [float(v) for v in values] for key, values in history.items()}, indent=1))
    height, width, channels = dataset.train_images.shape[1:]
    card = ModelCard(
        name=config.name,
        labels=list(dataset.class_names),
        input=InputSpec(height=int(height), width=int(width), channels=int(channels)),
        normalization=normalization,
        model=ModelSpec(
            family=config.model.name,
            feature_layer=models.FEATURE_LAYER,
            logits_layer=models.LOGITS_LAYER,
            head=head_kind(model),
            parameters=int(model.count_params()),
        ),
        dataset=dataset.summary(),
        training=training,
        metrics={"validation": {"accuracy": metrics["accuracy"], "loss": metrics["loss"]},
                 "evaluation": {**metrics, "tta_flip": training.get("tta_flip", False),
                                "tta_translate": training.get("tta_translate", False)}},
        reference=reference_stats(probabilities, dataset.val_images),
        files={"model.keras": FileEntry.of(artifact_dir / "model.keras")},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        git_commit=_git_commit(),
    )
    save_card(card, artifact_dir)
    _point_latest(artifact_dir)
    return card


def _git_commit() -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False)
    except OSError:
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def _point_latest(artifact_dir: Path) -> None:
    """artifacts/latest -> <run>, replaced atomically."""
    link = artifact_dir.parent / "latest"
    tmp = artifact_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(artifact_dir.name)
    os.replace(tmp, link)
