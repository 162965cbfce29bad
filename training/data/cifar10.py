"""CIFAR-10 from its official distributions, as a ``Dataset``.

``data.path`` may be:
- the python version's batch directory (``cifar-10-batches-py``: ``data_batch_1..5``,
  ``batches.meta``). Those files are pickles; they are read with an unpickler that admits only
  the numpy array constructors, so a tampered file cannot run code;
- the binary version's directory (``cifar-10-batches-bin``: ``data_batch_1..5.bin``, 1 label byte
  + 3072 pixel bytes per record, ``batches.meta.txt``);
- ``keras``: ``keras.datasets.cifar10`` (downloads; needs a network);
- a folder or tar of JPEGs such as ``../shared/datasets/cifar10-train-jpg.tar.gz`` — that is the
  ``folder`` dataset; this loader hands such a path over to it.

The official test batch is never mixed into training; validation is carved from the training
batches with the run's seed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.errors import UserError

__all__ = ["CLASS_NAMES", "load"]

CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


def load(config: DataConfig, seed: int):
    from training.data import Dataset, folder, stratified_split

    path = Path(config.path)
    if config.path == "keras":
        images, labels = _from_keras()
    elif not path.exists():
        raise UserError(f"dataset path not found: {path}")
    elif (path / "data_batch_1").is_file():
        images, labels = _from_python_batches(path)
    elif (path / "data_batch_1.bin").is_file():
        images, labels = _from_binary_batches(path)
    else:
        return folder.load(config, seed)
    if images.shape[1] != config.image_size:
        images = _resize(images, config.image_size)
    train, val = stratified_split(labels, config.validation_fraction, seed)
    return Dataset(
        name="cifar10",
        class_names=list(CLASS_NAMES),
        train_images=images[train],
        train_labels=labels[train],
        val_images=images[val],
        val_labels=labels[val],
        source=str(config.path),
    )


class _ArraysOnly(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays; refuse every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module.replace("numpy.core", "numpy._core"), name)


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return _ArraysOnly(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise UserError(f"cannot read CIFAR-10 batch {path}: {exc}") from None


def _from_python_batches(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(1, 6):
        batch = _unpickle(path / f"data_batch_{i}")
        if b"data" not in batch or b"labels" not in batch:
            raise UserError(f"CIFAR-10 batch {path / f'data_batch_{i}'} lacks data or labels")
        images.append(np.asarray(batch[b"data"], dtype=np.uint8))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int32))
    # (N, 3072) channel-planar -> (N, 32, 32, 3)
    return _planar_to_hwc(np.concatenate(images)), np.concatenate(labels)


def _from_binary_batches(path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for i in range(1, 6):
        file = path / f"data_batch_{i}.bin"
        raw = np.fromfile(file, dtype=np.uint8)
        if raw.size % 3073:
            raise UserError(f"{file} is {raw.size} bytes, not a whole number of 3073-byte records")
        records = raw.reshape(-1, 3073)
        labels.append(records[:, 0].astype(np.int32))
        images.append(records[:, 1:])
    return _planar_to_hwc(np.concatenate(images)), np.concatenate(labels)


def _planar_to_hwc(flat: np.ndarray) -> np.ndarray:
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def _from_keras() -> tuple[np.ndarray, np.ndarray]:
    import keras

    try:
        (images, labels), _ = keras.datasets.cifar10.load_data()
    except Exception as exc:  # no network, or a broken download
        raise UserError(f"keras.datasets.cifar10 could not download CIFAR-10: {exc}") from None
    return images, labels.reshape(-1).astype(np.int32)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    from serving.image.preprocess import to_model_input

    return np.stack([to_model_input(Image.fromarray(im), size, size) for im in images])
