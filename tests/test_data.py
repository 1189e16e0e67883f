"""Offline data: CIFAR python batches (folder and .tar.gz), IDX files, the mnist5k split,
and clear errors naming the expected files."""

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch

from landscape.data import DataError, load_dataset, read_idx, stratified_split


def _cifar_batch(n, label_key, seed):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"fixture batch", label_key: [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def _write_cifar10(folder):
    """The real layout: pickled (protocol 2, bytes keys) dicts of 3072-byte rows (R, G, B planes)."""
    batches = {}
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(4, b"labels", i)
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return batches


def _check_cifar(ds, batches):
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    expected = np.concatenate([batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)])
    assert torch.equal(ds.y_train, torch.as_tensor(expected))
    # undo the standardisation: pixel (c, h, w) of image 0 is byte c*1024 + h*32 + w
    raw = batches["data_batch_1"][b"data"][0]
    img = ds.x_train[0] * torch.tensor(ds.std).view(3, 1, 1) + torch.tensor(ds.mean).view(3, 1, 1)
    assert torch.allclose(img[1, 2, 3], torch.tensor(float(raw[1 * 1024 + 2 * 32 + 3])), atol=1e-3)
    assert ds.num_classes == 10


def test_cifar10_from_folder_and_parent(tmp_path):
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py")
    _check_cifar(load_dataset("cifar10", tmp_path / "cifar-10-batches-py"), batches)
    _check_cifar(load_dataset("cifar10", tmp_path), batches)


def test_cifar10_from_tar_gz(tmp_path):
    batches = _write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    _check_cifar(load_dataset("cifar10", tar_path), batches)  # the file itself
    (tmp_path / "src" / "cifar-10-batches-py" / "test_batch").unlink()
    _check_cifar(load_dataset("cifar10", tmp_path), batches)  # a folder holding the archive


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    train, test = _cifar_batch(6, b"fine_labels", 0), _cifar_batch(3, b"fine_labels", 1)
    train[b"fine_labels"][0] = 99
    (folder / "train").write_bytes(pickle.dumps(train, protocol=2))
    (folder / "test").write_bytes(pickle.dumps(test, protocol=2))
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.y_train[0] == 99 and len(ds.y_test) == 3


def test_cifar_errors_name_the_expected_files(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10", None)
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR python batch"):
        load_dataset("cifar10", tmp_path)


def test_cifar_unpickler_runs_no_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match=r"unexpected object (__builtin__|builtins)\.print"):
        load_dataset("cifar10", tmp_path)


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX: two zero bytes, dtype code 0x08 (uint8), ndim, big-endian uint32 dims, the data."""
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    files = {"train-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": np.array([0, 1, 2, 3, 9], dtype=np.uint8),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": np.array([5, 7], dtype=np.uint8)}
    for name, arr in files.items():
        if gz:
            with gzip.open(tmp_path / (name + ".gz"), "wb") as fh:
                fh.write(_idx_bytes(arr))
        else:
            (tmp_path / name).write_bytes(_idx_bytes(arr))
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    assert np.array_equal(read_idx(path), files["train-images-idx3-ubyte"])
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.x_train.shape == (5, 1, 28, 28) and ds.y_test.tolist() == [5, 7]


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4, 3), np.uint8))[:-2])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_missing_folder_names_the_files_and_the_package(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "missing")


def test_stratified_split_is_seeded_and_balanced():
    y = np.repeat(np.arange(10), 50)  # sorted by class, like mnist_5k.csv.gz
    tr1, te1 = stratified_split(y, 0.2, 0)
    tr2, te2 = stratified_split(y, 0.2, 0)
    assert np.array_equal(te1, te2) and np.array_equal(tr1, tr2)
    assert np.bincount(y[te1]).tolist() == [10] * 10
    assert not set(tr1) & set(te1) and len(tr1) + len(te1) == len(y)
    assert not np.array_equal(stratified_split(y, 0.2, 1)[1], te1)


def test_mnist5k_and_digits():
    ds = load_dataset("mnist5k")
    assert ds.x_train.shape == (4000, 1, 28, 28) and len(ds.y_test) == 1000
    assert np.bincount(ds.y_test.numpy()).tolist() == [100] * 10
    assert abs(ds.x_train.mean().item()) < 1e-4 and abs(ds.x_train.std().item() - 1) < 1e-3
    d = load_dataset("digits")
    assert d.x_train.shape[1:] == (1, 8, 8) and d.num_classes == 10


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        load_dataset("mnist")
