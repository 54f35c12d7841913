"""Loaders for image datasets: scikit-learn's digits, MNIST IDX files and CIFAR-10 pickle batches.

Nothing is downloaded: digits ships with scikit-learn, and MNIST and CIFAR-10 are read from files the
user brings. Pixels are scaled to ``[0, 1]``; images are NHWC when not flattened.
"""

from __future__ import annotations

import gzip
import math
import pickle
import zlib
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ._dataset import Dataset, check_labels, float_dtype, preprocess, to_one_hot

SPLITS = ("train", "test")

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _check_options(split: str, n: Any, flatten: Any, one_hot: Any, dtype: Any) -> np.dtype:
    """Check a loader's options before any file is read; return the float dtype."""
    if split not in SPLITS:
        raise ValueError(f"split: must be one of {list(SPLITS)}, got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1):
        raise ValueError(f"n: must be a positive integer or None, got {n!r}")
    for name, v in (("flatten", flatten), ("one_hot", one_hot)):
        if not isinstance(v, bool | np.bool_):
            raise ValueError(f"{name}: must be True or False, got {v!r}")
    return float_dtype(dtype)


def _check_n(n: int | None, available: int) -> int:
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= available:
        raise ValueError(f"n: must be an integer in [1, {available}] or None, got {n!r}")
    return int(n)


def _check_images(images: np.ndarray, labels: np.ndarray, max_value: float, where: str) -> None:
    """Refuse empty sets, pixels that are not finite numbers in ``[0, max_value]``, bad labels."""
    if images.shape[0] == 0:
        raise ValueError(f"path: {where} holds no examples")
    if images.dtype != np.uint8:  # uint8 pixels are in range by construction
        if images.dtype.kind not in "iuf" or not np.all(np.isfinite(images)):
            raise ValueError(f"path: {where} has non-finite or non-numeric pixels ({images.dtype})")
        lo, hi = images.min(), images.max()
        if lo < 0 or hi > max_value:
            raise ValueError(
                f"path: {where} has pixels in [{lo:g}, {hi:g}], expected [0, {max_value:g}]"
            )
    check_labels(labels, 10, f"path: {where}")


def _images_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    flatten: bool,
    one_hot: bool,
    dtype: Any,
    max_value: float,
) -> Dataset:
    """Return NHWC (or flattened) float images in ``[0, 1]`` with one-hot or int labels."""
    x = images.astype(dtype) / np.asarray(max_value, dtype)
    x = x.reshape(x.shape[0], -1) if flatten else x
    y = to_one_hot(labels, num_classes, dtype)  # also checks the label range
    return Dataset(x, y if one_hot else labels.astype(np.int64))


def read_idx(path: str | PathLike) -> np.ndarray:
    """Return the array stored in an IDX file (gzipped or not, detected from the content).

    Format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions ``d``, ``d`` big-endian uint32 sizes, then the data.

    Raises:
      FileNotFoundError: when ``path`` is not a file.
      ValueError: starting "path:", for an unreadable file, corrupt gzip data, a bad magic
        number or type code, or a data size that does not match the header (a truncated file).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: IDX file not found: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ValueError(f"path: cannot read {p} ({type(e).__name__}: {e.strerror})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"path: {p}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"path: {p}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"path: {p}: bad IDX header ({ndim} dimensions, {len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on forged sizes
    if len(raw) - header != expected:
        raise ValueError(
            f"path: {p}: IDX header says shape {shape} ({expected} data bytes) but the file has "
            f"{len(raw) - header} data bytes (truncated or corrupt)"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(directory: Path, names: list[str]) -> Path:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(f"path: none of {names} (optionally .gz) found in {directory}")


def mnist(
    path: str | PathLike | tuple[str | PathLike, str | PathLike],
    *,
    split: str = "train",
    n: int | None = None,
    flatten: bool = True,
    one_hot: bool = True,
    dtype: Any = np.float32,
) -> Dataset:
    """Load MNIST (or any IDX image/label pair) from user files; pixels scaled to ``[0, 1]``.

    Args:
      path: a directory holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``; the
        ``*-images.idx3-ubyte`` spelling is accepted too), or a pair ``(images_file, labels_file)``.
      split: "train" or "test" (ignored for an explicit pair).
      n: keep the first ``n`` examples, or None for all.
      flatten: return ``x`` as ``(n, 784)``; otherwise NHWC ``(n, 28, 28, 1)``.
      one_hot: return ``y`` as one-hot ``(n, 10)`` in ``dtype``; otherwise int labels ``(n,)``.
      dtype: float dtype of ``x``.

    Returns:
      A `Dataset`.

    Note:
      The default split is "train" (60,000 images); ``split="test"`` reads the 10,000 t10k
      images. (It used to be "test": code that relied on that must now pass ``split="test"``.)

    Raises:
      FileNotFoundError: naming the path, when a directory or file is missing.
      ValueError: naming the argument, for an unknown split, bad ``n``/``dtype``, corrupt files,
        images and labels that do not match, no examples, float pixels that are not finite or
        outside ``[0, 255]``, or labels outside ``[0, 10)``.
    """
    dtype = _check_options(split, n, flatten, one_hot, dtype)
    if isinstance(path, tuple | list):
        if len(path) != 2:
            raise ValueError(
                f"path: must be a directory or (images_file, labels_file), got {path!r}"
            )
        img_file, lbl_file = Path(path[0]), Path(path[1])
    else:
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(f"path: MNIST directory not found: {d}")
        prefix = "t10k" if split == "test" else "train"
        img_file = _find(d, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
        lbl_file = _find(d, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"path: images {img_file} must be (n, h, w) and labels {lbl_file} (n,), got "
            f"{images.shape} and {labels.shape}"
        )
    _check_images(images, labels, 255.0, f"{img_file} / {lbl_file}")
    k = _check_n(n, images.shape[0])
    return _images_dataset(
        images[:k, :, :, None],
        labels[:k],
        num_classes=10,
        flatten=flatten,
        one_hot=one_hot,
        dtype=dtype,
        max_value=255.0,
    )


def _multiarray(name: str) -> Any:
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26 has only numpy.core
        from numpy.core import multiarray
    return getattr(multiarray, name)


# The only globals a CIFAR-10 batch (a dict of a numpy array and lists) may reference.
_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("codecs").encode,
    **{
        (mod, name): (lambda name=name: _multiarray(name))
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy array globals in ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return _ALLOWED[module, name]()


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images NHWC uint8, labels)`` of one CIFAR-10 python batch file."""
    if not file.is_file():
        raise FileNotFoundError(f"path: CIFAR-10 batch not found: {file}")
    try:
        with file.open("rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a corrupt pickle can raise almost anything
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(
            f"path: {file}: not a readable CIFAR-10 batch ({type(e).__name__}: {msg})"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"path: {file}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(
            f"path: {file}: missing 'data' or 'labels' entry, keys {sorted(map(str, batch))}"
        )
    data, labels = np.asarray(data), np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or not len(data):
        raise ValueError(
            f"path: {file}: data must be uint8 (n, 3072) with n >= 1, got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise ValueError(
            f"path: {file}: labels must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    check_labels(labels, 10, f"path: {file}")
    # Rows hold the red, green and blue 32x32 planes one after another.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def cifar10(
    path: str | PathLike,
    *,
    split: str = "train",
    n: int | None = None,
    flatten: bool = True,
    one_hot: bool = True,
    dtype: Any = np.float32,
) -> Dataset:
    """Load CIFAR-10 from the python-pickle batches; pixels scaled to ``[0, 1]``.

    Reads ``data_batch_1`` .. ``data_batch_5`` (train) or ``test_batch`` (test); each is a pickled
    dict with ``b"data"`` (uint8, ``(n, 3072)``, red/green/blue planes) and ``b"labels"``. The
    unpickler resolves only numpy's array constructors, so a file cannot run code. The
    "cifar10-5k" subset of Cohen et al. is ``n=5000`` (or ``preprocess(ds, first_n=5000)``).

    Args:
      path: the ``cifar-10-batches-py`` directory, or a directory containing it.
      split: "train" or "test".
      n: keep the first ``n`` examples (only the batches needed are read), or None for all.
      flatten: return ``x`` as ``(n, 3072)`` in HWC order; otherwise NHWC ``(n, 32, 32, 3)``.
      one_hot: return ``y`` as one-hot ``(n, 10)``; otherwise int labels ``(n,)``.
      dtype: float dtype of ``x``.

    Returns:
      A `Dataset`.

    Raises:
      FileNotFoundError: naming the path, when the directory or a batch file is missing.
      ValueError: naming the argument, for an unknown split, bad ``n`` or ``dtype``, a corrupt
        or unexpected pickle, an empty batch, or labels outside ``[0, 10)``.
    """
    dtype = _check_options(split, n, flatten, one_hot, dtype)
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"path: CIFAR-10 directory not found: {d}")
    if (d / "cifar-10-batches-py").is_dir():
        d = d / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        img, lbl = _read_cifar_batch(d / name)
        images.append(img)
        labels.append(lbl)
        if n is not None and sum(len(a) for a in labels) >= n:
            break
    x, y = np.concatenate(images), np.concatenate(labels)
    k = _check_n(n, x.shape[0])
    return _images_dataset(
        x[:k],
        y[:k],
        num_classes=10,
        flatten=flatten,
        one_hot=one_hot,
        dtype=dtype,
        max_value=255.0,
    )


def digits(
    *,
    n: int | None = None,
    flatten: bool = True,
    one_hot: bool = True,
    standardize: str | None = None,
    dtype: Any = np.float32,
) -> Dataset:
    """Load scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; no download).

    Pixels (0..16) are scaled to ``[0, 1]``; ``standardize`` then applies `preprocess`.

    Args:
      n: keep the first ``n`` examples, or None for all.
      flatten: return ``x`` as ``(n, 64)``; otherwise NHWC ``(n, 8, 8, 1)``.
      one_hot: return ``y`` as one-hot ``(n, 10)``; otherwise int labels ``(n,)``.
      standardize: None, "feature" or "sample" (see `preprocess`).
      dtype: float dtype of ``x``.

    Returns:
      A `Dataset`.

    Raises:
      ValueError: for bad ``n``, ``standardize``, ``dtype``, ``flatten`` or ``one_hot``.
    """
    dtype = _check_options("train", n, flatten, one_hot, dtype)
    if standardize is not None and standardize not in ("feature", "sample"):
        raise ValueError(f"standardize: must be 'feature', 'sample' or None, got {standardize!r}")
    from sklearn.datasets import load_digits  # slow to import: only once the options are good

    raw = load_digits()
    k = _check_n(n, raw.images.shape[0])
    ds = _images_dataset(
        raw.images[:k, :, :, None],
        raw.target[:k],
        num_classes=10,
        flatten=flatten,
        one_hot=one_hot,
        dtype=dtype,
        max_value=16.0,
    )
    return ds if standardize is None else preprocess(ds, standardize=standardize)
