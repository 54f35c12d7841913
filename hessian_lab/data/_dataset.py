"""The `Dataset` tuple, `preprocess` (subset, centre or standardise, scale, label encoding) and
`random_subset`."""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

STANDARDIZE = ("feature", "sample")


class _DatasetFields(NamedTuple):
    x: Any
    y: Any


class Dataset(_DatasetFields):
    """Inputs and targets as numpy arrays with a shared leading (example) axis.

    Attributes:
      x: inputs, shape ``(n, ...)``.
      y: one-hot float targets ``(n, k)``, int labels ``(n,)``, or (sequences) next tokens.

    Raises:
      ValueError: when ``x`` and ``y`` are arrays whose lengths differ, or hold no examples.
    """

    __slots__ = ()

    def __new__(cls, x: Any, y: Any) -> Dataset:
        # Only arrays are checked, so jax.tree utilities may rebuild a Dataset from other leaves.
        if hasattr(x, "shape") and hasattr(y, "shape"):
            nx = x.shape[0] if len(x.shape) else None
            ny = y.shape[0] if len(y.shape) else None
            if nx is None or ny is None or nx != ny:
                raise ValueError(
                    "x and y: must share their leading (example) axis, got x.shape="
                    f"{tuple(x.shape)} and y.shape={tuple(y.shape)}"
                )
            if nx == 0:
                raise ValueError(f"x and y: hold no examples (x.shape={tuple(x.shape)})")
        return super().__new__(cls, x, y)


def float_dtype(dtype: Any, name: str = "dtype") -> np.dtype:
    """Return ``np.dtype(dtype)`` if it is a float dtype; raise ValueError naming ``name``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise ValueError(f"{name}: must be a float dtype (float32, float64, ...), got {dtype!r}")
    return dt


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    """Return ``labels`` if they are integers in ``[0, num_classes)``; raise naming ``name``."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{name}: labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, {num_classes}), "
            f"got range [{labels.min()}, {labels.max()}]"
        )
    return labels


def to_one_hot(labels: np.ndarray, num_classes: int, dtype: Any = np.float32) -> np.ndarray:
    """Return the one-hot encoding ``(n, num_classes)`` of int labels ``(n,)``.

    Raises:
      ValueError: naming the argument, for labels that are not integers in
        ``[0, num_classes)`` or ``num_classes`` not an int >= 1.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes: must be an int >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes: must be an int >= 1, got {num_classes!r}")
    labels = check_labels(labels, num_classes, "labels")
    return np.eye(num_classes, dtype=dtype)[labels]


def _safe_std(a: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Return the standard deviation along ``axis`` with zeros replaced by ones (constant inputs)."""
    s = a.std(axis=axis, keepdims=True)
    return np.where(s > 0, s, 1.0)


def preprocess(
    ds: Dataset,
    *,
    first_n: int | None = None,
    center: bool = False,
    standardize: str | None = None,
    scale: float | None = None,
    one_hot: bool | None = None,
    num_classes: int | None = None,
    dtype: Any = None,
) -> Dataset:
    """Return a preprocessed copy of ``ds``; the steps run in the order of the arguments.

    1. ``first_n``: keep the first ``n`` examples (``first_n=5000`` of CIFAR-10's training set is
       the "cifar10-5k" subset of Cohen et al.); statistics below use only the kept examples.
    2. ``center``: subtract the per-feature mean over examples.
    3. ``standardize``: "feature" maps every feature to mean 0, std 1 over examples; "sample" maps
       every example to mean 0, std 1 over its features. Constant features/examples are only
       centred.
    4. ``scale``: multiply the inputs by ``scale``.
    5. ``one_hot``: True encodes int labels as one-hot (``num_classes`` defaults to max label + 1);
       False turns one-hot targets back into int labels; None leaves ``y`` alone.

    Args:
      ds: the dataset.
      first_n: number of leading examples to keep, or None for all.
      center: subtract the feature means.
      standardize: "feature", "sample" or None.
      scale: input multiplier, or None.
      one_hot: target encoding, see above.
      num_classes: classes for the one-hot encoding.
      dtype: float dtype of the returned inputs (and one-hot targets); default that of ``ds.x``.

    Returns:
      A new `Dataset`; ``ds`` is not modified.

    Raises:
      ValueError: naming the argument, for a ``ds`` with no examples or non-finite inputs,
        ``first_n`` outside ``[1, n]``, an unknown ``standardize``, a non-finite ``scale``, a
        non-float ``dtype``, or labels that cannot be encoded as asked.
    """
    x, y = np.asarray(ds.x), np.asarray(ds.y)
    if x.ndim == 0 or x.shape[0] == 0 or y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"ds: must hold n >= 1 examples in x and y, got x.shape={x.shape} y.shape={y.shape}"
        )
    n = x.shape[0]
    if x.dtype.kind not in "biuf" or not np.all(np.isfinite(x)):
        raise ValueError(f"ds: inputs x must be finite numbers, got dtype {x.dtype} with NaN/inf")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(np.isfinite(y))):
        raise ValueError(f"ds: targets y must be finite numbers, got dtype {y.dtype} with NaN/inf")
    if first_n is not None:
        ok = isinstance(first_n, int | np.integer) and not isinstance(first_n, bool)
        if not (ok and 1 <= first_n <= n):
            raise ValueError(f"first_n: must be an integer in [1, {n}] or None, got {first_n!r}")
        x, y = x[: int(first_n)], y[: int(first_n)]
    if standardize is not None and standardize not in STANDARDIZE:
        raise ValueError(f"standardize: must be one of {[*STANDARDIZE, None]}, got {standardize!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(scale)
    ):
        raise ValueError(f"scale: must be a finite number or None, got {scale!r}")
    if one_hot is not None and not isinstance(one_hot, bool | np.bool_):
        raise ValueError(f"one_hot: must be True, False or None, got {one_hot!r}")
    dtype = (
        float_dtype(dtype)
        if dtype is not None
        else (x.dtype if x.dtype.kind == "f" else np.float32)
    )
    x = x.astype(np.float64)
    if center or standardize == "feature":
        x = x - x.mean(axis=0, keepdims=True)
    if standardize == "feature":
        x = x / _safe_std(x, axis=0)
    elif standardize == "sample":
        axes = tuple(range(1, x.ndim))
        x = x - x.mean(axis=axes, keepdims=True)
        x = x / _safe_std(x, axis=axes)
    if scale is not None:
        x = x * scale
    x = x.astype(dtype)
    if one_hot and np.issubdtype(y.dtype, np.integer):
        if y.min() < 0:
            raise ValueError(f"ds: labels must be >= 0 to be one-hot encoded, got min {y.min()}")
        k = int(y.max()) + 1 if num_classes is None else num_classes
        if num_classes is not None and (
            isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= y.max()
        ):
            raise ValueError(
                f"num_classes: must be an int > the largest label {y.max()}, got {num_classes!r}"
            )
        y = to_one_hot(y, k, dtype)
    elif one_hot is not None and not one_hot and not np.issubdtype(y.dtype, np.integer):
        one = (y == 1).sum(axis=-1) == 1 if y.ndim == 2 else None
        if one is None or not (np.all(one) and np.all((y == 0) | (y == 1))):
            raise ValueError(
                f"one_hot: False needs one-hot targets (n, k) of 0s and a single 1 per row, "
                f"got y of shape {y.shape} that is not"
            )
        y = y.argmax(axis=-1)
    return Dataset(x, y)


def random_subset(ds: Dataset, n: int, *, seed: int = 0) -> Dataset:
    """Return a fixed random subset of ``n`` examples of ``ds``, in their original order.

    For measuring curvature on part of the training set at a fraction of the cost, e.g.
    ``callbacks.sharpness(loss_fn, data=random_subset(train, 450))``: the subset is drawn once
    (without replacement, by ``numpy.random.default_rng(seed)``), so every measurement of a run
    sees the same examples and the same seed gives the same subset. A uniformly drawn subset
    avoids the class imbalance a prefix can have in a sorted dataset.

    Args:
      ds: the dataset.
      n: number of examples to keep, in ``[1, len(ds.x)]``.
      seed: seed of the draw (a non-negative int).

    Raises:
      ValueError: naming the argument, for ``n`` outside ``[1, len(ds.x)]`` or a bad ``seed``.
    """
    if not (isinstance(ds, tuple) and len(ds) == 2):
        raise ValueError(f"ds: must be a Dataset (x, y), got {type(ds).__name__}")
    idx = subset_indices(np.shape(ds.x)[0], n, seed=seed)
    return Dataset(np.asarray(ds.x)[idx], np.asarray(ds.y)[idx])


def subset_indices(total: int, n: int, *, seed: int = 0, name: str = "n") -> np.ndarray:
    """Sorted indices of ``n`` of ``total`` examples, drawn without replacement by
    ``numpy.random.default_rng(seed)``: the draw behind :func:`random_subset` (and the
    callbacks' ``subset=``). Raises ValueError naming ``name`` or ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= total:
        raise ValueError(
            f"{name}: must be an integer in [1, {total}] (examples in the data), got {n!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    return np.sort(np.random.default_rng(int(seed)).choice(total, size=int(n), replace=False))
