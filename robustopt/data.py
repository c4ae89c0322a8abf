"""Data sets: scikit-learn's 8×8 digits (embedded, no download) and MNIST / Fashion-MNIST from IDX files.

Every loader returns numpy arrays ``(X, y)``: ``X`` float32 scaled to [0, 1], flat ``(n, d)`` by default or
images ``(n, 1, side, side)`` with ``flatten=False``; ``y`` int64. Nothing here downloads: missing files
raise ``FileNotFoundError`` naming every path tried and how to get the files.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

__all__ = ["load_digits", "load_mnist", "load_fashion_mnist", "load_idx"]

_SPLITS = ("train", "test")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# md5 of the *uncompressed* IDX bytes: Debian recompressed Fashion-MNIST, so .gz checksums differ while
# the content is identical to upstream's.
_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_HOW_TO_GET = {
    "mnist": "Download the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from the MNIST site or a mirror into one "
             "folder and pass it as root= (or set ROBUSTOPT_DATA); torchvision's MNIST/raw layout works too.",
    "fashion-mnist": "On Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them under "
                     "/usr/share/datasets/fashion-mnist); or download the four IDX files from "
                     "github.com/zalandoresearch/fashion-mnist into a folder and pass it as root=.",
}
_SUBDIRS = {"mnist": ("", "mnist", "MNIST/raw"), "fashion-mnist": ("", "fashion-mnist", "FashionMNIST/raw")}
_SYSTEM_DIRS = {"mnist": (), "fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}


def _check_split(split, allow_none: bool):
    if split in _SPLITS or (allow_none and split is None):
        return split
    allowed = "'train', 'test'" + (" or None" if allow_none else "")
    raise ValueError(f"split must be {allowed}; got {split!r}")


def _select_classes(X, y, classes):
    if classes is None:
        return X, y
    classes = [int(c) for c in np.atleast_1d(classes)]
    present = set(np.unique(y).tolist())
    missing = [c for c in classes if c not in present]
    if missing or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct labels among {sorted(present)}; got {classes}")
    keep = np.isin(y, classes)
    return X[keep], y[keep]


def load_digits(classes=None, split="train", flatten=True, seed=0):
    """scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), scaled from 0..16 to [0, 1].

    Parameters
    ----------
    classes : sequence of int, optional
        Keep only these labels (labels are kept as they are, e.g. ``classes=(3, 8)`` gives y in {3, 8}).
    split : "train", "test" or None
        A stratified 75/25 split fixed by ``seed`` (the same every run); ``None`` returns all images.
    flatten : bool
        ``(n, 64)`` if True, else ``(n, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    _check_split(split, allow_none=True)
    bunch = _sk_load_digits()
    X = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    if split is not None:
        parts = train_test_split(X, y, test_size=0.25, stratify=y, random_state=seed)
        X, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    X, y = _select_classes(X, y, classes)
    if not flatten:
        X = X.reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(X), np.ascontiguousarray(y)


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:  # truncated or not gzip
        raise ValueError(f"{path}: cannot read ({err})") from None


def load_idx(path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a uint8 array, checking its header against its size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    return _parse_idx(_read_bytes(path), str(path))


def _parse_idx(data: bytes, name: str) -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{name}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"{name}: header says shape {shape} ({expected} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _candidate_dirs(dataset: str, root):
    if root is not None:
        bases = [Path(root).expanduser()]
        system = ()
    else:
        env = os.environ.get("ROBUSTOPT_DATA")
        bases = ([Path(env).expanduser()] if env else []) + [
            Path.home() / ".robustopt" / "data", Path.home() / "data", Path.cwd() / "data"]
        system = _SYSTEM_DIRS[dataset]
    dirs = [base / sub if sub else base for base in bases for sub in _SUBDIRS[dataset]]
    return dirs + [Path(s) for s in system]


@functools.lru_cache(maxsize=8)
def _load_checked(path: str, dataset: str, stem: str) -> np.ndarray:
    data = _read_bytes(Path(path))
    digest = hashlib.md5(data).hexdigest()
    if digest != _MD5[dataset][stem]:
        raise ValueError(f"{path}: integrity check failed (md5 of the uncompressed bytes is {digest}, expected "
                         f"{_MD5[dataset][stem]} for {dataset}); the file is corrupt or not the {dataset} file")
    return _parse_idx(data, path)


def _find(dataset: str, root, stem: str, tried: list):
    for folder in _candidate_dirs(dataset, root):
        for name in (stem + ".gz", stem):
            path = folder / name
            tried.append(str(path))
            if path.is_file():
                return path
    return None


def _load_idx_dataset(dataset: str, root, split, classes, flatten):
    _check_split(split, allow_none=False)
    tried: list = []
    images_stem, labels_stem = _FILES[split]
    images_path, labels_path = _find(dataset, root, images_stem, tried), _find(dataset, root, labels_stem, tried)
    if images_path is None or labels_path is None:
        listed = "\n  ".join(tried)
        raise FileNotFoundError(f"{dataset} {split} files not found. Tried:\n  {listed}\n{_HOW_TO_GET[dataset]}")
    images = _load_checked(str(images_path), dataset, images_stem)
    labels = _load_checked(str(labels_path), dataset, labels_stem)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{images_path} and {labels_path} do not match: shapes {images.shape} and {labels.shape}")
    X = images.astype(np.float32) / 255.0
    y = labels.astype(np.int64)
    X, y = _select_classes(X, y, classes)
    X = X.reshape(len(X), -1) if flatten else X.reshape(len(X), 1, *images.shape[1:])
    return np.ascontiguousarray(X), y


def load_mnist(root=None, split="train", classes=None, flatten=True):
    """MNIST from the four standard IDX files (``.gz`` or raw; torchvision's ``MNIST/raw`` layout too).

    ``root`` defaults to ``$ROBUSTOPT_DATA``, then ``~/.robustopt/data``, ``~/data`` and ``./data`` (each
    also with ``mnist/`` and ``MNIST/raw/``). Files are checked against the md5 of their uncompressed
    content. Returns ``X`` float32 in [0, 1] of shape (n, 784) (or (n, 1, 28, 28)) and ``y`` int64.
    """
    return _load_idx_dataset("mnist", root, split, classes, flatten)


def load_fashion_mnist(root=None, split="train", classes=None, flatten=True):
    """Fashion-MNIST, like :func:`load_mnist`; without ``root`` it also looks in
    ``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``)."""
    return _load_idx_dataset("fashion-mnist", root, split, classes, flatten)
