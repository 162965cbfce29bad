"""Datasets by name. Each loader returns the same ``Dataset``: uint8 pixel arrays, split.

A loader validates its input (path, image files, class count) and raises ``UserError`` before
any TensorFlow import, so that a wrong path costs a second. ``training.data.pipeline`` turns the
arrays into ``tf.data`` pipelines.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.config import DataConfig
from training.data import cifar10, folder, shapes
from training.errors import UserError

__all__ = ["DATASETS", "Dataset", "class_table", "load_dataset", "stratified_split"]

log = logging.getLogger("sightline.training")


@dataclass
class Dataset:
    name: str
    class_names: list[str]
    train_images: np.ndarray  # (N, S, S, 3) uint8
    train_labels: np.ndarray  # (N,) int32
    val_images: np.ndarray
    val_labels: np.ndarray
    source: str = ""  # path or generator description, for the model card
    val_boxes: np.ndarray | None = None  # (M, 4) object boxes, where the dataset has them
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) unreadable

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """sha256 over labels and pixels of both splits: the same data, the same print."""
        digest = hashlib.sha256()
        for array in (self.train_labels, self.train_images, self.val_labels, self.val_images):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update("\n".join(self.class_names).encode())
        return digest.hexdigest()

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint(),
            "num_train": int(len(self.train_labels)),
            "num_val": int(len(self.val_labels)),
            "class_counts": {
                name: int(count)
                for name, count in zip(
                    self.class_names,
                    np.bincount(self.train_labels, minlength=self.num_classes), strict=True
                )
            },
            "skipped_files": len(self.skipped),
        }


def _load_shapes(config: DataConfig, seed: int) -> Dataset:
    data = shapes.generate(config.num_images, config.image_size, seed=seed)
    train, val = stratified_split(data.labels, config.validation_fraction, seed)
    return Dataset(
        name="shapes",
        class_names=list(shapes.CLASS_NAMES),
        train_images=data.images[train],
        train_labels=data.labels[train],
        val_images=data.images[val],
        val_labels=data.labels[val],
        val_boxes=data.boxes[val],
        source=f"generated: {config.num_images} images, {config.image_size}px, seed {seed}",
    )


DATASETS: dict[str, Callable[[DataConfig, int], Dataset]] = {
    "shapes": _load_shapes,
    "cifar10": cifar10.load,
    "folder": folder.load,
}


def load_dataset(config: DataConfig, seed: int) -> Dataset:
    if config.name not in DATASETS:
        raise UserError(f"unknown dataset {config.name!r}; known: {', '.join(DATASETS)}")
    dataset = DATASETS[config.name](config, seed)
    _check(dataset, config)
    return dataset


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): ``fraction`` of every class held out, the same for the same seed.

    A class with a single example stays in training (it cannot be in both).
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = min(max(int(round(len(members) * fraction)), 1), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_table(dataset: Dataset) -> str:
    """A printable count per class and split."""
    train = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
    val = np.bincount(dataset.val_labels, minlength=dataset.num_classes)
    width = max(len(n) for n in dataset.class_names + ["class"])
    rows = [f"{'class':<{width}}  {'train':>7}  {'val':>6}"]
    rows += [
        f"{name:<{width}}  {t:>7}  {v:>6}"
        for name, t, v in zip(dataset.class_names, train, val, strict=True)
    ]
    rows.append(f"{'total':<{width}}  {train.sum():>7}  {val.sum():>6}")
    return "\n".join(rows)


def _check(dataset: Dataset, config: DataConfig) -> None:
    if dataset.num_classes < 2:
        raise UserError(
            f"dataset {dataset.source or dataset.name} needs at least 2 classes; "
            f"found {dataset.num_classes} ({', '.join(dataset.class_names) or 'none'})"
        )
    if len(dataset.val_labels) == 0:
        raise UserError(f"dataset {dataset.source or dataset.name} has no validation images")
    counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
    log.info("dataset %s:\n%s", dataset.name, class_table(dataset))
    smallest = max(int(counts.min()), 1)
    if counts.max() / smallest > config.imbalance_warning_ratio:
        log.warning(
            "class imbalance: largest class has %d images, smallest %d (ratio %.1f > %.1f); "
            "consider loss.name=weighted_crossentropy or focal",
            counts.max(), counts.min(), counts.max() / smallest, config.imbalance_warning_ratio,
        )
    if dataset.skipped:
        log.warning("skipped %d unreadable images", len(dataset.skipped))
