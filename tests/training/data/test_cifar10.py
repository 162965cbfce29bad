import os
import pickle

import numpy as np
import pytest

from training.config import DataConfig
from training.data import load_dataset
from training.errors import UserError


def planar(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]


@pytest.fixture
def python_batches(tmp_path):
    for i in range(1, 6):
        data, labels = planar(20, i)
        with open(tmp_path / f"data_batch_{i}", "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle, protocol=2)
    return tmp_path


def test_python_batches(python_batches):
    ds = load_dataset(DataConfig(name="cifar10", path=str(python_batches)), seed=0)
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10
    assert len(ds.train_labels) + len(ds.val_labels) == 100
    assert ds.train_images.shape[1:] == (32, 32, 3)
    # the planar layout became HWC: pixel (0, 0) of image 0 holds bytes 0, 1024, 2048
    data, _ = planar(20, 1)
    all_images = np.concatenate([ds.train_images, ds.val_images])
    assert any((im[0, 0] == data[0, [0, 1024, 2048]]).all() for im in all_images)


def test_binary_batches(tmp_path):
    for i in range(1, 6):
        data, labels = planar(10, i)
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        records.tofile(tmp_path / f"data_batch_{i}.bin")
    ds = load_dataset(DataConfig(name="cifar10", path=str(tmp_path)), seed=0)
    assert len(ds.train_labels) + len(ds.val_labels) == 50


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(UserError, match="refusing to load"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path)), seed=0)
    assert not (tmp_path / "pwned").exists()


def test_truncated_binary_batch(tmp_path):
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="not a whole number of 3073-byte records"):
        load_dataset(DataConfig(name="cifar10", path=str(tmp_path)), seed=0)


def test_a_folder_of_jpegs_goes_to_the_folder_loader(image_folder):
    ds = load_dataset(DataConfig(name="cifar10", path=str(image_folder)), seed=0)
    assert ds.class_names == ["cat", "dog", "fox"]
