import logging
import tarfile

import numpy as np
import pytest

from tests.conftest import encode
from training.config import DataConfig
from training.data import class_table, load_dataset, stratified_split
from training.errors import UserError


def config(path, **kw) -> DataConfig:
    return DataConfig(name="folder", path=str(path), image_size=16, validation_fraction=0.2, **kw)


def test_directory_of_class_folders(image_folder):
    ds = load_dataset(config(image_folder), seed=0)
    assert ds.class_names == ["cat", "dog", "fox"]
    assert ds.train_images.shape == (24, 16, 16, 3) and ds.train_images.dtype == np.uint8
    assert np.bincount(ds.val_labels).tolist() == [2, 2, 2]  # stratified
    # class c was drawn with channel c bright: labels line up with pixels after resizing
    assert (ds.train_images.mean(axis=(1, 2)).argmax(axis=1) == ds.train_labels).all()
    assert "total" in class_table(ds)


def test_same_seed_same_split_other_seed_other_split(image_folder):
    a, b = load_dataset(config(image_folder), 1), load_dataset(config(image_folder), 1)
    c = load_dataset(config(image_folder), 2)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_tar_gz_with_train_and_val_splits(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("tar") / "data.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for file in sorted(image_folder.rglob("*.png")):
            split = "val" if int(file.stem) < 3 else "train"
            tar.add(file, arcname=f"{split}/{file.parent.name}/{file.name}")
        tar.add(image_folder / "cat" / "0.png", arcname="test/cat/0.png")
    ds = load_dataset(config(out), seed=0)
    assert len(ds.val_labels) == 9 and len(ds.train_labels) == 21  # val/ used as is, test/ not


def test_corrupt_images_are_counted_reported_and_skipped(image_folder, caplog):
    (image_folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    truncated = encode(np.zeros((30, 30, 3), np.uint8), "JPEG")[:60]
    (image_folder / "dog" / "cut.jpg").write_bytes(truncated)
    (image_folder / "dog" / "notes.txt").write_text("not an image, ignored")
    with caplog.at_level(logging.WARNING, logger="sightline.training"):
        ds = load_dataset(config(image_folder), seed=0)
    assert len(ds.train_labels) + len(ds.val_labels) == 30
    assert sorted(p.split("/")[-1] for p, _ in ds.skipped) == ["broken.jpg", "cut.jpg"]
    assert "broken.jpg" in caplog.text and "skipped 2 unreadable images" in caplog.text


def test_imbalance_warning(image_folder, caplog):
    first = (image_folder / "cat" / "0.png").read_bytes()
    for i in range(10, 40):
        (image_folder / "cat" / f"{i}.png").write_bytes(first)
    with caplog.at_level(logging.WARNING, logger="sightline.training"):
        load_dataset(config(image_folder), seed=0)
    assert "class imbalance" in caplog.text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "dataset path not found"),
        (lambda root: root, "no images found"),
        (lambda root: (root / "only").mkdir() or (root / "only" / "a.png").write_bytes(
            encode(np.zeros((4, 4, 3), np.uint8))) and root,
         "at least 2 classes; found 1 \\(only\\)"),
        (lambda root: (root / "x.tar").write_bytes(b"not a tar") and root / "x.tar",
         "neither a directory nor a readable tar"),
    ],
)
def test_bad_datasets(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_dataset(config(make(tmp_path)), seed=0)


def test_all_images_corrupt(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match="none of the 2 images"):
        load_dataset(config(tmp_path), seed=0)


def test_stratified_split_keeps_singletons_in_training():
    labels = np.array([0] * 10 + [1] * 20 + [2])
    train, val = stratified_split(labels, 0.1, seed=0)
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 2, 0]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(31))
