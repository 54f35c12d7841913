"""Run directories: plain files written atomically, so an interrupted sweep loses nothing.

A run directory holds ``config.json`` (the configuration, the package version and the platform),
``arrays.npz`` (named numpy arrays), ``summary.json`` (key scalar numbers) and optional CSV
tables. Every file is written to a temporary name in the same directory and renamed into place,
so a reader never sees a partial file. Files get the mode a plain ``open`` would give them
(``0o666`` less the user's umask: 0644 under umask 022), so colleagues can read shared results.

Atomic writes are ours rather than a dependency's: a temporary file in the target folder, fsync,
rename, and the umask mode are a dozen lines, and every writer here (npz, JSON, CSV) shares them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import __version__

__all__ = [
    "CorruptRunError",
    "atomic_write_bytes",
    "environment",
    "load_run",
    "npz_bytes",
    "read_json",
    "read_npz",
    "save_run",
    "to_jsonable",
    "write_csv",
    "write_json",
    "write_npz",
]


class CorruptRunError(ValueError):
    """A results file exists but cannot be read back."""


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc).

    ``os.umask`` can only be read by setting it, which races with other threads creating files;
    that fallback is used only where /proc is missing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    The file ends with mode ``0o666 & ~umask``, as ``open(path, "wb")`` would create it
    (``tempfile.mkstemp`` alone would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """``obj`` as :func:`write_json` stores it: string keys, lists, Python scalars, inf/nan as text.

    Compare a config with a stored one after passing it through this, not before.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)  # JSON has no inf/nan; keep them readable
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically. numpy scalars and arrays become lists."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON written by :func:`write_json`; raise :class:`CorruptRunError` if unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptRunError(f"cannot read {path}: {e}") from e


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """Encode named arrays as an uncompressed ``.npz`` (no pickles; zip64 for large arrays).

    Raises:
      ValueError: a name is not a non-empty string without '/', or an array holds objects
        (the message starts with the array's name).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"array names must be non-empty strings without '/', got {key!r}")
            value = np.asanyarray(value)
            if value.dtype.hasobject:
                raise ValueError(
                    f"{key}: holds Python objects ({value.dtype}); only arrays are saved"
                )
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, value, allow_pickle=False)
    return buf.getvalue()


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> None:
    """Write named arrays as an uncompressed ``.npz``, atomically (the one npz writer here)."""
    atomic_write_bytes(path, npz_bytes(arrays))


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` (no pickles).

    Raises:
      FileNotFoundError: no file at ``path``.
      CorruptRunError: the file exists but is not a readable npz (truncated, garbage).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file {path}")
    try:
        raw = io.BytesIO(Path(path).read_bytes())  # np.load would leak its handle on garbage
    except OSError as e:
        raise CorruptRunError(f"cannot read {path}: {e.strerror}") from e
    if not zipfile.is_zipfile(raw):
        # np.load would fall back to unpickling and advise loading "unsafely": never here
        raise CorruptRunError(f"cannot read {path}: not an npz (zip) file, truncated or garbage")
    try:
        with np.load(raw, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, zlib, numpy format and OS errors alike
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "allow_pickle" in why:
            why = "it holds object (pickled) arrays, which are never loaded"
        raise CorruptRunError(f"cannot read {path}: {why}") from e


def write_csv(path: str | os.PathLike, columns: Mapping[str, Sequence[Any]]) -> None:
    """Write equal-length columns as a CSV table with a header row, atomically."""
    names = list(columns)
    lengths = {len(columns[n]) for n in names}
    if len(lengths) > 1:
        raise ValueError(f"columns: all columns must have the same length, got {lengths}")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(names)
    for row in zip(*(np.asarray(columns[n]).tolist() for n in names), strict=True):
        w.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode())


def environment() -> dict[str, str]:
    """The package version and platform, recorded in every run directory."""
    return {
        "hessian_lab": __version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save_run(
    run_dir: str | os.PathLike,
    *,
    config: Mapping[str, Any],
    arrays: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
    kind: str = "",
) -> Path:
    """Save a run: ``config.json`` (+ environment), ``arrays.npz``, ``summary.json``.

    Arrays are written first and the config last, so a directory with a ``config.json`` is
    complete. Returns the run directory.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run_dir: {run_dir} exists and is not a directory")
    write_npz(run_dir / "arrays.npz", arrays)
    write_json(run_dir / "summary.json", dict(summary or {}))
    write_json(
        run_dir / "config.json",
        {"kind": kind, "config": dict(config), "environment": environment()},
    )
    return run_dir


def load_run(run_dir: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Load ``(config, arrays, summary)`` saved by :func:`save_run`.

    Raises:
      FileNotFoundError: ``run_dir`` holds no ``config.json``.
      CorruptRunError: a file is present but unreadable.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"run_dir: no config.json in {run_dir}")
    meta = read_json(run_dir / "config.json")
    try:
        arrays = read_npz(run_dir / "arrays.npz")
    except FileNotFoundError as e:  # a config.json without its arrays: an incomplete run
        raise CorruptRunError(f"cannot read {run_dir / 'arrays.npz'}: {e}") from e
    summary = read_json(run_dir / "summary.json")
    config = meta.get("config", {}) if isinstance(meta, dict) else {}
    return config, arrays, summary
