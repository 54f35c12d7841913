"""Data: loaders on files written here in the real formats, corrupt files, generators, preprocess."""

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from hessian_lab import data

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    """Return ``a`` in the IDX format: magic, big-endian sizes, big-endian data."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(dtype).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> Path:
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def _fake_mnist(directory: Path, prefix: str, n: int, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    _write(directory / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), gz)
    _write(directory / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), gz)
    return images, labels


# --- IDX / MNIST ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    images, labels = _fake_mnist(tmp_path, "t10k", 6, gz)
    train_images, _ = _fake_mnist(tmp_path, "train", 4, gz, seed=1)
    ds = data.mnist(tmp_path, split="test")
    assert data.mnist(tmp_path).x.shape == (4, 784)  # the default split is train
    assert ds.x.shape == (6, 784) and ds.x.dtype == np.float32
    np.testing.assert_allclose(ds.x, images.reshape(6, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y, np.eye(10)[labels])
    raw = data.mnist(tmp_path, split="train", flatten=False, one_hot=False, n=3)
    assert raw.x.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(raw.x[..., 0], train_images[:3] / 255.0, rtol=1e-6)
    assert raw.y.dtype == np.int64
    suffix = ".gz" if gz else ""
    pair = (
        tmp_path / f"t10k-images-idx3-ubyte{suffix}",
        tmp_path / f"t10k-labels-idx1-ubyte{suffix}",
    )
    np.testing.assert_array_equal(data.mnist(pair).x, ds.x)


def test_read_idx_other_types(tmp_path):
    a = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(
        data.read_idx(_write(tmp_path / "a", _idx_bytes(a, 0x0B), True)), a
    )
    f = np.linspace(0, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(
        data.read_idx(_write(tmp_path / "f", _idx_bytes(f, 0x0D), False)), f
    )


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "magic"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00", "truncated"),
        (lambda b: b[:6], "header"),
        (lambda b: b"", "magic"),
    ],
)
def test_corrupt_idx_raises(tmp_path, corrupt, match):
    payload = corrupt(_idx_bytes(np.zeros((2, 3, 3), np.uint8)))
    with pytest.raises(ValueError, match=match):
        data.read_idx(_write(tmp_path / "x", payload, False))
    with pytest.raises(ValueError, match=match):
        data.read_idx(_write(tmp_path / "x", payload, True))


def test_corrupt_gzip_and_mismatched_files_raise(tmp_path):
    good = gzip.compress(_idx_bytes(np.zeros((4, 3, 3), np.uint8)))
    (tmp_path / "bad.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(tmp_path / "bad.gz")
    _fake_mnist(tmp_path, "t10k", 5, False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(4, np.uint8)), False)
    with pytest.raises(ValueError, match="labels"):
        data.mnist(tmp_path, split="test")


def test_missing_paths_raise_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    for call in (data.mnist, data.cifar10, data.read_idx):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            call(missing)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.mnist(tmp_path, split="train")
    with pytest.raises(ValueError, match="split"):
        data.mnist(tmp_path, split="val")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST test set not at {MNIST_DIR}")
def test_real_mnist_test_set():
    images = data.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    ds = data.mnist(MNIST_DIR, split="test", flatten=False, one_hot=False)
    assert ds.x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y, minlength=10), MNIST_TEST_COUNTS)
    assert 0.0 <= ds.x.min() and ds.x.max() == 1.0


# --- CIFAR-10 ------------------------------------------------------------------------------------


def _cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def _fake_cifar(directory: Path, n: int = 4) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: _cifar_batch(n, seed) for seed, name in enumerate(names)}
    for name, batch in batches.items():
        (directory / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def test_cifar10_reads_pickle_batches(tmp_path):
    batches = _fake_cifar(tmp_path / "cifar-10-batches-py")
    train = data.cifar10(tmp_path, split="train", flatten=False, one_hot=False)
    assert train.x.shape == (20, 32, 32, 3) and train.y.shape == (20,)
    b1 = batches["data_batch_1"]
    # row layout: the red, green and blue 32x32 planes one after another
    i, r, c, ch = 2, 5, 17, 1
    np.testing.assert_allclose(train.x[i, r, c, ch], b1[b"data"][i, ch * 1024 + r * 32 + c] / 255)
    np.testing.assert_array_equal(train.y[:4], b1[b"labels"])
    np.testing.assert_array_equal(train.y[16:], batches["data_batch_5"][b"labels"])
    test = data.cifar10(tmp_path / "cifar-10-batches-py", split="test")
    assert test.x.shape == (4, 3072) and test.y.shape == (4, 10)
    sub = data.cifar10(tmp_path, n=6, flatten=False)
    np.testing.assert_array_equal(sub.x, train.x[:6])


def test_cifar10_rejects_unsafe_and_corrupt_pickles(tmp_path):
    _fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load global"):
        data.cifar10(tmp_path, split="test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_cifar_batch(3, 0))[:-40])
    with pytest.raises(ValueError, match="test_batch"):
        data.cifar10(tmp_path, split="test")
    bad = _cifar_batch(3, 0)
    bad[b"data"] = bad[b"data"][:, :100]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(ValueError, match="3072"):
        data.cifar10(tmp_path, split="test")
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.cifar10(tmp_path, split="train")


# --- digits, Dataset, preprocess -----------------------------------------------------------------


def test_digits():
    ds = data.digits()
    assert ds.x.shape == (1797, 64) and ds.y.shape == (1797, 10)
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    img = data.digits(n=50, flatten=False, one_hot=False, standardize="sample")
    assert img.x.shape == (50, 8, 8, 1) and img.y.shape == (50,)
    np.testing.assert_allclose(img.x.reshape(50, -1).mean(1), 0, atol=1e-5)


def test_dataset_checks_lengths():
    with pytest.raises(ValueError, match=r"x and y.*\(3, 2\).*\(4,\)"):
        data.Dataset(np.zeros((3, 2)), np.zeros(4))
    ds = data.Dataset(np.zeros((3, 2)), np.zeros(3))
    assert ds._fields == ("x", "y") and isinstance(ds, tuple)


def test_preprocess():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 5)).astype(np.float32)
    x[:, 4] = 1.0  # a constant feature must not divide by zero
    ds = data.Dataset(x, rng.integers(0, 3, size=40))
    f = data.preprocess(ds, standardize="feature", first_n=30, one_hot=True)
    assert f.x.shape == (30, 5) and f.x.dtype == np.float32 and f.y.shape == (30, 3)
    np.testing.assert_allclose(f.x.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(f.x.std(0), [1, 1, 1, 1, 0], atol=1e-5)
    s = data.preprocess(ds, standardize="sample", scale=2.0)
    np.testing.assert_allclose(s.x.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(s.x.std(1), 2, rtol=1e-5)
    c = data.preprocess(ds, center=True, dtype=np.float64)
    np.testing.assert_allclose(c.x, x - x.mean(0), atol=1e-5)
    back = data.preprocess(f, one_hot=False)
    np.testing.assert_array_equal(back.y, ds.y[:30])
    np.testing.assert_array_equal(ds.x, x)  # input untouched
    with pytest.raises(ValueError, match="standardize"):
        data.preprocess(ds, standardize="global")
    with pytest.raises(ValueError, match="first_n"):
        data.preprocess(ds, first_n=41)


def test_random_subset_is_a_fixed_uniform_draw():
    x = np.arange(200, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    ds = data.Dataset(x, np.arange(200) % 4)
    sub = data.random_subset(ds, 50, seed=3)
    rows = sub.x[:, 0].astype(int)
    assert sub.x.shape == (50, 3) and len(set(rows)) == 50  # without replacement
    assert np.all(np.diff(rows) > 0)  # original order kept
    np.testing.assert_array_equal(sub.y, rows % 4)  # x and y rows stay paired
    np.testing.assert_array_equal(data.random_subset(ds, 50, seed=3).x, sub.x)  # same seed
    assert not np.array_equal(data.random_subset(ds, 50, seed=4).x, sub.x)
    # Uniform over examples: over many seeds each example is picked with probability 1/4.
    counts = np.zeros(200)
    for seed in range(400):
        counts[data.random_subset(ds, 50, seed=seed).x[:, 0].astype(int)] += 1
    # Binomial(400, 1/4) per example: mean 100, sd 8.7; the extremes of 200 stay within 5 sd.
    assert abs(counts.mean() - 100) < 1e-9 and np.abs(counts - 100).max() < 5 * 8.7
    assert data.random_subset(ds, 200).x.shape == (200, 3)
    for bad in (0, 201, 2.5, True):
        with pytest.raises(ValueError, match=r"n: must be an integer in \[1, 200\]"):
            data.random_subset(ds, bad)
    with pytest.raises(ValueError, match="seed"):
        data.random_subset(ds, 5, seed=-1)


# --- synthetic -----------------------------------------------------------------------------------


def test_teacher_is_seeded():
    a, b, c = data.teacher(0, 50, 4, 2), data.teacher(0, 50, 4, 2), data.teacher(1, 50, 4, 2)
    assert a.x.shape == (50, 4) and a.y.shape == (50, 2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.allclose(a.y, c.y)
    assert 0.05 < a.y.var() < 20
    noisy = data.teacher(0, 50, 4, 2, noise=0.5)
    assert 0.05 < np.var(noisy.y - a.y) < 0.6
    with pytest.raises(ValueError, match="activation"):
        data.teacher(0, 5, 4, activation="sin")


def test_gaussian_mixture():
    ds = data.gaussian_mixture(0, 300, 10, 3, separation=6.0, std=0.5, one_hot=False)
    assert ds.x.shape == (300, 10) and ds.y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(ds.y), [100, 100, 100])
    means = np.stack([ds.x[ds.y == c].mean(0) for c in range(3)])
    # within-class spread is std * sqrt(d); class means are about `separation` apart
    assert np.linalg.norm(ds.x - means[ds.y], axis=1).mean() < 0.5 * np.sqrt(10) * 1.2
    assert np.linalg.norm(means[0] - means[1]) > 2.0
    with pytest.raises(ValueError, match="num_classes"):
        data.gaussian_mixture(0, 10, 2, 1)
