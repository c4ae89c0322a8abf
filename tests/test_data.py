"""robustopt.data: digits split, IDX reading, integrity checks, clear errors for missing files."""
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from robustopt.data import load_digits, load_fashion_mnist, load_idx, load_mnist

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_digits_split_is_deterministic_stratified_and_scaled():
    X_train, y_train = load_digits()
    X_test, y_test = load_digits(split="test")
    X_all, y_all = load_digits(split=None)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert X_train.shape[1] == 64 and len(X_train) + len(X_test) == len(X_all) == 1797
    assert 0.0 <= X_all.min() and X_all.max() == 1.0
    assert abs(len(X_test) / len(X_all) - 0.25) < 0.01
    # stratified: class proportions agree between the splits
    p_train = np.bincount(y_train) / len(y_train)
    p_test = np.bincount(y_test) / len(y_test)
    assert np.abs(p_train - p_test).max() < 0.01
    again, _ = load_digits()
    np.testing.assert_array_equal(X_train, again)
    other, _ = load_digits(seed=1)
    assert not np.array_equal(X_train, other)


def test_digits_classes_and_images():
    X, y = load_digits(classes=(3, 8), flatten=False)
    assert set(np.unique(y)) == {3, 8} and X.shape[1:] == (1, 8, 8)
    with pytest.raises(ValueError, match="classes"):
        load_digits(classes=(0, 11))
    with pytest.raises(ValueError, match="split"):
        load_digits(split="validation")


def _write_idx(path, array, magic_dims):
    header = bytes([0, 0, 8, magic_dims]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def test_idx_reader_checks_the_header(tmp_path):
    images = np.arange(2 * 3 * 3).reshape(2, 3, 3)
    _write_idx(tmp_path / "a.gz", images, 3)
    np.testing.assert_array_equal(load_idx(tmp_path / "a.gz"), images)
    truncated = tmp_path / "b"
    _write_idx(truncated, images, 3)
    truncated.write_bytes(truncated.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        load_idx(truncated)
    (tmp_path / "c").write_bytes(b"not an idx file")
    with pytest.raises(ValueError, match="magic"):
        load_idx(tmp_path / "c")


def test_missing_files_list_every_path_tried(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message
    assert str(tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte") in message
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)


def test_integrity_check_rejects_foreign_files(tmp_path):
    images = np.zeros((2, 28, 28))
    labels = np.zeros(2)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 3)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 1)
    with pytest.raises(ValueError, match="integrity check failed"):
        load_mnist(root=tmp_path, split="test")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST files are absent")
def test_real_mnist_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED_MNIST / name, raw / name)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "rb") as f:  # one raw (uncompressed) file too
        (raw / "t10k-labels-idx1-ubyte").write_bytes(f.read())
    os.remove(raw / "t10k-labels-idx1-ubyte.gz")
    X, y = load_mnist(root=tmp_path, split="test", classes=(0, 1), flatten=False)
    assert X.shape[1:] == (1, 28, 28) and X.dtype == np.float32
    assert set(np.unique(y)) == {0, 1} and len(y) == 980 + 1135
    assert 0.0 <= X.min() and X.max() <= 1.0


@pytest.mark.skipif(not (FASHION / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package():
    X, y = load_fashion_mnist(split="test")
    assert X.shape == (10000, 784) and np.bincount(y).tolist() == [1000] * 10
    X_train, y_train = load_fashion_mnist(classes=(0, 1))
    assert X_train.shape == (12000, 784)
