"""Data specs: one string names a dataset everywhere (``--data``, a study's ``data`` field, Python).

Grammar: ``KIND[:LOCATION][?split=train|test]``.

=================  ====================================================================
``digits``         scikit-learn's 8x8 digits (1797 images; one split, "train")
``mnist:DIR``      the MNIST IDX files in ``DIR`` (train: 60,000 images; test: 10,000)
``cifar10:DIR``    the CIFAR-10 python batches in ``DIR`` (train: 50,000; test: 10,000)
``npz:FILE``       a numpy ``.npz`` with arrays ``x``, ``y`` (train) and optionally
                   ``x_test``, ``y_test`` (test)
=================  ====================================================================

The split travels inside the spec (``mnist:DIR?split=test``) rather than in a separate option, so
that the one string a run records in its config names exactly the examples it trained on; where
a dataset has both splits the default is "train". :func:`parse_data` writes every spec back in
its canonical form with the split named (``mnist:DIR?split=train``).

Loaded data keep their natural shape: images NHWC in ``[0, 1]`` with int labels, npz arrays as
stored (floats as float32 unless float64, integer labels as int64); a problem reshapes or encodes
them as its model and loss need.

Example:
  >>> from hessian_lab import data
  >>> spec = data.parse_data("digits")
  >>> spec.kind, spec.split, str(spec)
  ('digits', 'train', 'digits?split=train')
  >>> ds = data.load_data(spec, n=5)
  >>> ds.x.shape, ds.y.tolist()
  ((5, 8, 8, 1), [0, 1, 2, 3, 4])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._dataset import Dataset
from ._files import SPLITS, cifar10, digits, mnist

__all__ = ["DATA_KINDS", "DataSpec", "load_data", "parse_data"]

# kind -> (needs a location, the splits it has)
DATA_KINDS: dict[str, tuple[bool, tuple[str, ...]]] = {
    "digits": (False, ("train",)),
    "mnist": (True, SPLITS),
    "cifar10": (True, SPLITS),
    "npz": (True, SPLITS),
}
_FORMS = "digits, mnist:DIR, cifar10:DIR or npz:FILE, optionally followed by ?split=train|test"


class DataSpec(NamedTuple):
    """A parsed data spec.

    Attributes:
      kind: "digits", "mnist", "cifar10" or "npz".
      location: the directory or file (None for digits), as written.
      split: "train" or "test".
    """

    kind: str
    location: str | None
    split: str

    def __str__(self) -> str:
        head = self.kind if self.location is None else f"{self.kind}:{self.location}"
        return f"{head}?split={self.split}"

    def describe(self, n: int | None = None) -> str:
        """A reader's line: ``"mnist (TEST split, 10000 examples) from data/mnist"``."""
        split = "TEST split" if self.split == "test" else "train split"
        count = "" if n is None else f", {n} examples"
        where = "" if self.location is None else f" from {self.location}"
        return f"{self.kind} ({split}{count}){where}"


def parse_data(text: Any, *, name: str = "data") -> DataSpec:
    """Read a data spec (module doc); check its syntax only (nothing is read from disk).

    Args:
      text: the spec, e.g. ``"mnist:~/data/mnist?split=test"``; a `DataSpec` passes through.
      name: the option or field named in errors (``"--data"`` on the command line).

    Raises:
      ValueError: starting with ``name``, for an unknown kind, a missing or unexpected location,
        an unknown query key, or a split the dataset does not have.
    """
    if isinstance(text, DataSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: must be a data spec ({_FORMS}), got {text!r}")
    body, sep, query = text.strip().partition("?")
    kind, colon, location = body.partition(":")
    kind = kind.strip().lower()
    if kind not in DATA_KINDS:
        raise ValueError(f"{name}: unknown dataset {kind!r} in {text!r}; expected {_FORMS}")
    needs_location, splits = DATA_KINDS[kind]
    location = location.strip()
    if needs_location and not location:
        what = "FILE" if kind == "npz" else "DIR"
        raise ValueError(f"{name}: {kind} needs a location, as in {kind}:{what}, got {text!r}")
    if not needs_location and colon:
        raise ValueError(f"{name}: {kind} is built in and takes no location, got {text!r}")
    split = "train"
    for item in query.split("&") if sep else ():
        key, eq, value = item.partition("=")
        if key.strip() != "split" or not eq:
            raise ValueError(f"{name}: the only option after '?' is split=train|test, got {text!r}")
        split = value.strip().lower()
    if split not in splits:
        has = "only a train split" if splits == ("train",) else "splits train and test"
        raise ValueError(f"{name}: {kind} has {has}, got split {split!r} in {text!r}")
    return DataSpec(kind, location or None, split)


def _npz(spec: DataSpec, name: str) -> Dataset:
    path = Path(spec.location).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name}: npz file not found: {path}")
    keys = ("x", "y") if spec.split == "train" else ("x_test", "y_test")
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = list(f.files)
            if not all(k in stored for k in keys):
                raise ValueError(
                    f"{name}: {path} holds no arrays {keys[0]!r} and {keys[1]!r} for the "
                    f"{spec.split} split (it has: {', '.join(stored) or 'nothing'})"
                )
            x, y = f[keys[0]], f[keys[1]]
    except (OSError, EOFError) as e:
        raise ValueError(f"{name}: {path} is not a readable .npz file ({e})") from None
    except ValueError as e:
        if str(e).startswith(f"{name}:"):
            raise
        raise ValueError(f"{name}: {path} is not a readable .npz file ({e})") from None
    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf" or x.ndim == 0 or y.ndim == 0:
        raise ValueError(
            f"{name}: {path}: {keys[0]} and {keys[1]} must be numeric arrays with an example "
            f"axis, got {x.dtype} {x.shape} and {y.dtype} {y.shape}"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{name}: {path}: {keys[0]} or {keys[1]} holds NaN or inf")
    x = x.astype(x.dtype if x.dtype == np.float64 else np.float32)
    y = y.astype(np.int64) if y.dtype.kind in "biu" else y.astype(x.dtype)
    try:
        return Dataset(x, y)
    except ValueError as e:
        raise ValueError(f"{name}: {path}: {e}") from None


def load_data(spec: DataSpec | str, *, n: int | None = None, name: str = "data") -> Dataset:
    """Load the examples a data spec names: images NHWC in ``[0, 1]`` with int labels.

    Args:
      spec: a `DataSpec` or its text.
      n: keep the first ``n`` examples (at most the number available), or None for all.
      name: the option or field named in errors.

    Returns:
      A `Dataset` of numpy arrays.

    Raises:
      ValueError: starting with ``name``, for a bad spec, missing or unreadable files, arrays
        of the wrong kind, or ``n`` outside ``[1, available]``.
    """
    spec = parse_data(spec, name=name)
    try:
        if spec.kind == "npz":
            ds = _npz(spec, name)
            available = ds.x.shape[0]
            if n is not None and not (
                isinstance(n, int | np.integer) and not isinstance(n, bool) and 1 <= n <= available
            ):
                raise ValueError(f"n: must be an integer in [1, {available}], got {n!r}")
            return ds if n is None else Dataset(ds.x[:n], ds.y[:n])
        kw: dict[str, Any] = dict(n=n, flatten=False, one_hot=False)
        if spec.kind == "digits":
            return digits(**kw)
        location = str(Path(spec.location).expanduser())
        load = mnist if spec.kind == "mnist" else cifar10
        return load(location, split=spec.split, **kw)
    except (OSError, ValueError) as e:
        msg = " ".join(str(e).split())
        if msg.startswith((f"{name}:", "n:")):
            raise ValueError(msg) from None
        msg = msg.removeprefix("path: ")
        raise ValueError(f"{name}: cannot load {str(spec)!r}: {msg}") from None
