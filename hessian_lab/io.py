"""Run directories: plain files written atomically, so an interrupted sweep loses nothing.

A run directory holds ``config.json`` (the configuration, the package version and the platform),
``arrays.npz`` (named numpy arrays), ``summary.json`` (key scalar numbers) and optional CSV
tables. Every file is written to a temporary name in the same directory and renamed into place,
so a reader never sees a partial file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CorruptRunError",
    "atomic_write_bytes",
    "environment",
    "load_run",
    "read_json",
    "save_run",
    "to_jsonable",
    "write_csv",
    "write_json",
]


class CorruptRunError(ValueError):
    """A results file exists but cannot be read back."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
    from . import __version__

    try:
        import jax

        jax_version = jax.__version__
        backend = jax.default_backend()
    except Exception:  # pragma: no cover - jax is a hard dependency
        jax_version, backend = "unknown", "unknown"
    return {
        "hessian_lab": __version__,
        "jax": jax_version,
        "backend": backend,
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
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(run_dir / "arrays.npz", buf.getvalue())
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
        with np.load(run_dir / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise CorruptRunError(f"cannot read {run_dir / 'arrays.npz'}: {e}") from e
    summary = read_json(run_dir / "summary.json")
    config = meta.get("config", {}) if isinstance(meta, dict) else {}
    return config, arrays, summary
