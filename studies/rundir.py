"""Run directories: the manifest that names a run, and the sweep's per-point files.

``<run_dir>/study.json`` (:data:`MANIFEST`) is written before any work and names the study and
config; :func:`check_run_dir` refuses a directory that holds another run. A sweep writes each
finished point as ``points/<index>.npz`` (its arrays) and then ``points/<index>.json`` (its
description, the "finished" mark); :func:`finished` reads and checks them back. Used by
:mod:`hessian_lab.studies.sweep`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hessian_lab.io import CorruptRunError, atomic_write_bytes, environment, read_json, write_json

from .configs import SweepError

__all__ = [
    "MANIFEST",
    "check_run_dir",
    "check_writable",
    "clean_stale",
    "clean_temporaries",
    "diff",
    "finished",
    "locked",
    "read_manifest",
    "write_manifest",
    "write_point",
]

MANIFEST = "study.json"
FORMAT = 1


def read_manifest(run_dir: Path) -> dict | None:
    """The run directory's ``study.json``, or None if there is none."""
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "study" not in manifest or "config" not in manifest:
        raise CorruptRunError(f"cannot read {path}: not a hessian-lab study manifest")
    return manifest


def diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts[:3]) + (" ..." if len(parts) > 3 else "")


def check_run_dir(run_dir: Path, study: str, config: dict) -> dict | None:
    """Validate ``run_dir`` for a run of ``study`` with ``config``; return its manifest if any.

    Writes nothing. A new or empty directory is fine; so is one holding the same study and config,
    and so is one where a run started but failed before it finished a point (its manifest is
    replaced, so a corrected rerun is not refused).
    """
    try:
        return _check_run_dir(run_dir, study, config)
    except CorruptRunError as e:
        raise CorruptRunError(f"--out: {e}") from e


def _check_run_dir(run_dir: Path, study: str, config: dict) -> dict | None:
    if run_dir.exists() and not run_dir.is_dir():
        raise SweepError(f"--out: {run_dir} exists and is not a directory")
    if not run_dir.exists():
        return None
    manifest = read_manifest(run_dir)
    if manifest is None and (run_dir / "config.json").exists():
        meta = read_json(run_dir / "config.json")
        stored = meta.get("config") if isinstance(meta, dict) else None
        if not isinstance(stored, dict):
            raise CorruptRunError(f"cannot read {run_dir / 'config.json'}: no config")
        manifest = {"study": meta.get("kind") or study, "config": stored}
    if manifest is None:
        # Hidden temporary files are another process's atomic write in progress (a shard
        # started at the same moment into the same directory), not someone else's data.
        if any(not p.name.startswith(".") for p in run_dir.iterdir()):
            raise SweepError(f"--out: {run_dir} is not empty and holds no {MANIFEST}")
        return None
    started_only = not (run_dir / "config.json").exists() and not any(
        (run_dir / "points").glob("*.json")
    )
    if started_only and (manifest["study"], manifest["config"]) != (study, config):
        return None  # a run that failed before finishing anything: the new one replaces it
    if manifest["study"] != study:
        raise SweepError(f"--out: {run_dir} holds a run of {manifest['study']!r}, not {study!r}")
    if manifest["config"] != config:
        raise SweepError(
            f"--out: {run_dir} holds a run with a different config ({diff(manifest['config'], config)})"
            "; use a new --out or the same settings"
        )
    return manifest


def check_writable(run_dir: Path) -> None:
    """Refuse a ``run_dir`` that cannot be created or written, leaving nothing behind.

    For a command that works first and writes its results at the end (``hessian-lab sharpness
    --out``): a temporary directory is made and removed in ``run_dir``, or in its nearest
    existing parent, so the answer is the file system's own (root ignores permission bits, a
    read-only mount does not).

    Raises:
      SweepError: naming --out.
    """
    target = run_dir.absolute()
    while not target.exists():
        target = target.parent
    if not target.is_dir():
        raise SweepError(f"--out: {run_dir} cannot be created: {target} is not a directory")
    try:
        tempfile.TemporaryDirectory(dir=target, prefix=".probe-").cleanup()
    except OSError as e:
        raise SweepError(f"--out: cannot write to {run_dir}: {e.strerror or e}") from e


def write_manifest(run_dir: Path, study: str, config: dict, num_points: int | None, **extra):
    write_json(
        run_dir / MANIFEST,
        {
            "format": FORMAT,
            "study": study,
            "config": config,
            "num_points": num_points,
            "environment": environment(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        },
    )


def finished(run_dir: Path, points: list[dict]) -> set[int]:
    """Indices of the finished points in ``run_dir/points``, each checked against ``points``."""
    folder = run_dir / "points"
    if not folder.is_dir():
        return set()
    done = set()
    for path in sorted(folder.glob("*.json")):
        if not path.stem.isdigit():
            continue
        index = int(path.stem)
        meta = read_json(path)
        if (
            not isinstance(meta, dict)
            or meta.get("index") != index
            or index >= len(points)
            or meta.get("point") != points[index]
        ):
            raise SweepError(
                f"{path} does not match point {index} of this sweep; "
                "delete it to recompute, or use a new --out"
            )
        npz = folder / f"{index}.npz"
        try:
            with zipfile.ZipFile(npz) as zf:
                if zf.testzip() is not None:
                    raise zipfile.BadZipFile("bad CRC")
        except (OSError, zipfile.BadZipFile) as e:
            raise CorruptRunError(
                f"cannot read {npz}: {e}; delete {path.name} to recompute the point"
            ) from e
        done.add(index)
    return done


def write_point(run_dir: Path, index: int, point: dict, arrays: bytes, **meta: Any) -> None:
    folder = run_dir / "points"
    # Arrays first, description last: the .json is the "finished" mark.
    atomic_write_bytes(folder / f"{index}.npz", arrays)
    write_json(folder / f"{index}.json", {"index": index, "point": point, **meta})


def clean_stale(run_dir: Path, indices: list[int]) -> None:
    # A SIGKILL inside atomic_write_bytes leaves its hidden temporary file behind.
    folder = run_dir / "points"
    if folder.is_dir():
        for index in indices:
            for tmp in folder.glob(f".{index}.*.tmp"):
                tmp.unlink(missing_ok=True)


def clean_temporaries(run_dir: Path) -> None:
    """Remove the hidden temporary files a killed write left in the run root and ``figures/``."""
    for folder in (run_dir, run_dir / "figures"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(run_dir: Path, shard: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock for one shard (``"i/n"``) while a process works in it.

    A second process running the same shard into the same directory is refused at once (it would
    compute every point again); other shards of the sweep take their own locks and work in
    parallel on their own points. The lock is an ``flock`` on a hidden file, so a killed process
    never leaves a stale lock (the empty hidden file stays behind). Creating it is also the
    check that ``run_dir`` is writable, before any work.

    Raises:
      SweepError: another process holds the lock, or ``run_dir`` cannot be written.
    """
    name = ".lock-" + shard.replace("/", "of")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / name, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise SweepError(f"--out: cannot write to {run_dir}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SweepError(
                f"--out: another hessian-lab process (pid {pid}) is running shard {shard} into "
                f"{run_dir}; wait for it to finish, or use another --out or --shard"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield  # the file stays: unlinking it would let a waiting opener lock a dead inode
    finally:
        os.close(fd)
