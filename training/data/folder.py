"""A folder of class sub-folders, or a .tar / .tar.gz of one, as a ``Dataset``.

Layout: ``<class>/<image>``, optionally under ``train/`` and ``val/`` (``validation/``); a
``test/`` split is left alone for a final evaluation. Class names come from folder names,
sorted. Without a ``val/`` split a stratified validation split is carved with the run's seed.

Images are decoded with Pillow on a thread pool (decoding releases the GIL) and resized with
``serving.image.preprocess`` — the function the server uses. A file that will not decode is
counted, logged with its path and skipped; the run goes on.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from serving.image.preprocess import to_model_input
from training.config import DataConfig
from training.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "load"]

log = logging.getLogger("sightline.training")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_MAX_PIXELS = 64_000_000  # refuse decompression bombs in training data too


def load(config: DataConfig, seed: int):
    from training.data import Dataset, stratified_split

    path = Path(config.path)
    if not path.exists():
        raise UserError(f"dataset path not found: {path}")
    files = list(_read_files(path))  # [(split, class, name, bytes)]
    files = [f for f in files if f[0] != "test"]
    if not files:
        raise UserError(
            f"no images found in {path}: expected <class>/<image> with one of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    class_names = sorted({f[1] for f in files})
    if len(class_names) < 2:
        raise UserError(
            f"dataset {path} needs at least 2 classes; found {len(class_names)} ({class_names[0]})"
        )
    images, keep, skipped = _decode_all([f[3] for f in files], [f[2] for f in files], config)
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[f[1]] for f in files], dtype=np.int32)[keep]
    splits = np.array([f[0] for f in files])[keep]
    if (splits == "val").any():
        train, val = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    else:
        train, val = stratified_split(labels, config.validation_fraction, seed)
    for name, reason in skipped[:20]:
        log.warning("unreadable image skipped: %s (%s)", name, reason)
    return Dataset(
        name="folder",
        class_names=class_names,
        train_images=images[train],
        train_labels=labels[train],
        val_images=images[val],
        val_labels=labels[val],
        source=str(path),
        skipped=skipped,
    )


def _read_files(path: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """Yield (split, class, display name, encoded bytes) for every image file."""
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file():
                entry = _classify(PurePosixPath(file.relative_to(path).as_posix()))
                if entry:
                    yield (*entry, str(file), file.read_bytes())
        return
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        message = f"dataset {path} is neither a directory nor a readable tar: {exc}"
        raise UserError(message) from None
    with archive:
        for member in archive:
            entry = member.isfile() and _classify(PurePosixPath(member.name))
            if entry:
                yield (*entry, f"{path}:{member.name}", archive.extractfile(member).read())


def _classify(relative: PurePosixPath) -> tuple[str, str] | None:
    """(split, class) for an image path, or None for anything that is not an image."""
    if relative.suffix.lower() not in IMAGE_SUFFIXES or len(relative.parts) < 2:
        return None
    if any(part.startswith(".") for part in relative.parts):
        return None
    parts = relative.parts
    split = _SPLITS.get(parts[-3].lower(), "train") if len(parts) >= 3 else "train"
    return split, parts[-2]


def _decode_all(blobs: list[bytes], names: list[str], config: DataConfig):
    """Decode in parallel -> (images (K, S, S, 3) uint8, kept indices, skipped (name, reason))."""
    size = config.image_size

    def decode(blob: bytes):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                if image.width * image.height > _MAX_PIXELS:
                    return f"{image.width}x{image.height} pixels exceeds {_MAX_PIXELS}"
                image.load()
                return to_model_input(ImageOps.exif_transpose(image), size, size)
        except Exception as exc:  # Pillow raises many types for corrupt files; all mean "skip"
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(decode, blobs, chunksize=256))
    keep = np.array([isinstance(r, np.ndarray) for r in results], dtype=bool)
    skipped = [(n, r) for n, r in zip(names, results, strict=True) if isinstance(r, str)]
    images = np.stack([r for r in results if isinstance(r, np.ndarray)]) if keep.any() else None
    if images is None:
        raise UserError(f"none of the {len(blobs)} images in {config.path} could be decoded")
    return images, keep, skipped
