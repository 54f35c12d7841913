"""Run a study into a run directory: resumable, shardable sweeps and plain runs.

A study with ``points``/``run_point``/``assemble`` (see ``docs/dev/contracts.md``) is run point by
point. Each finished point is written atomically to ``<run_dir>/points/<index>.npz`` (its arrays)
and then ``<index>.json`` (its description); a point counts as finished once its ``.json`` exists,
so a run killed at any moment resumes where it stopped, with no duplicate or partial records.
``shard=(i, n)`` runs only the points with ``index % n == i``; :func:`merge` gathers shard
directories and assembles them. Studies without points simply run and save.

Every run directory starts with ``study.json`` (study name, config, package version, platform),
written before any work; rerunning into a directory whose ``study.json`` holds another study or
config is an error, never a silent mix. ``config.json`` (written last by the study's ``save``)
marks a complete run.

Example:
  >>> from hessian_lab.studies import sweep
  >>> sweep.parse_shard("1/3")
  Shard(index=1, count=3)
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import types
import typing
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

from hessian_lab.io import (
    CorruptRunError,
    atomic_write_bytes,
    environment,
    read_json,
    to_jsonable,  # the same normalisation write_json applies, so stored and new configs compare
    write_json,
)

from . import registry

__all__ = [
    "MANIFEST",
    "Outcome",
    "Shard",
    "StudyError",
    "SweepError",
    "check_run_dir",
    "config_from_dict",
    "config_to_dict",
    "execute",
    "field_types",
    "is_sweep",
    "merge",
    "parse_shard",
    "with_overrides",
]

MANIFEST = "study.json"
_FORMAT = 1
_REQUIRED = ("Config", "TINY", "DEFAULT", "run", "save", "load", "figures", "summary")
_SWEEP = ("points", "run_point", "assemble")

Progress = Callable[[int, int], None]


class SweepError(ValueError):
    """Bad input: a wrong option, a mismatched or corrupted run directory (CLI exit code 2)."""


class StudyError(RuntimeError):
    """The study's own code failed while running, saving or loading (CLI exit code 1)."""


class Shard(NamedTuple):
    index: int
    count: int


WHOLE = Shard(0, 1)


class Outcome(NamedTuple):
    """What :func:`execute` or :func:`merge` did.

    ``results`` is None unless the run is complete; ``num_points`` is None for studies without
    points; ``done`` counts the finished points in the whole run directory and ``ran`` those
    computed by this call.
    """

    run_dir: Path
    study: str
    complete: bool
    results: Any
    num_points: int | None
    done: int
    ran: int


# ---------------------------------------------------------------------------------------------
# Configs: typed overrides from strings ("--set lr=0.1") or JSON values.


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a Config dataclass, exactly as ``write_json`` stores it."""
    return _normalize(dataclasses.asdict(config))


def _normalize(obj: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def field_types(config_cls: type, example: Any) -> dict[str, Any]:
    """Map each init field of a Config dataclass to its resolved type annotation."""
    fields = [f for f in dataclasses.fields(config_cls) if f.init]
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolved annotations: fall back on the example's value types
        hints = {}
    return {f.name: hints.get(f.name, type(getattr(example, f.name))) for f in fields}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON value) to type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if len(options) < len(args) and (
            value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        ):
            return None
        for option in options:
            try:
                return _coerce(option, value, key)
            except ValueError:
                continue
        raise ValueError(f"{key}: cannot read {value!r} as {tp}")
    if origin is Literal:
        for allowed in args:
            try:
                if _coerce(type(allowed), value, key) == allowed:
                    return allowed
            except ValueError:
                continue
        raise ValueError(f"{key}: must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            items: list[Any] = [s.strip() for s in value.split(",")] if value.strip() else []
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ValueError(f"{key}: expected comma-separated values, got {value!r}")
        if args and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(args[0], v, key) for v in items]
        elif args:
            if len(items) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(items)}")
            items = [_coerce(a, v, key) for a, v in zip(args, items, strict=True)]
        return list(items) if (origin or tp) is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and number.is_integer():
            return int(number)
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def with_overrides(config: Any, overrides: Sequence[str] | Mapping[str, Any]) -> Any:
    """Return ``config`` with fields replaced, each value read according to the field's type.

    ``overrides`` is either ``["key=value", ...]`` (the CLI's ``--set``; tuples are written
    ``0.1,0.2``, booleans ``true``/``false``, optionals ``none``) or a mapping of JSON values.

    Raises:
      SweepError: an unknown key (the message lists the allowed ones), an unreadable value, or a
        value the Config rejects.
    """
    types_ = field_types(type(config), config)
    if isinstance(overrides, Mapping):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise SweepError(f"--set: expected key=value, got {item!r}")
            pairs.append((key.strip(), value))
    unknown = [k for k, _ in pairs if k not in types_]
    if unknown:
        raise SweepError(
            f"unknown config key {unknown[0]!r} for {type(config).__module__.rsplit('.', 1)[-1]}"
            f"; allowed: {', '.join(types_)}"
        )
    try:
        values = {k: _coerce(types_[k], v, k) for k, v in pairs}
        return dataclasses.replace(config, **values)
    except (ValueError, TypeError) as e:
        raise SweepError(f"config: {e}") from e


def config_from_dict(module: ModuleType, stored: Mapping[str, Any]) -> Any:
    """Rebuild a study's Config from its stored JSON form (lists become tuples, etc.)."""
    return with_overrides(module.DEFAULT, stored)


def parse_shard(spec: str | None) -> Shard:
    """Read ``"i/n"`` (0 <= i < n) into a :class:`Shard`; None means the whole sweep."""
    if spec is None:
        return WHOLE
    head, sep, tail = spec.partition("/")
    try:
        index, count = int(head), int(tail)
    except ValueError:
        index, count = -1, 0
    if not sep or count < 1 or not 0 <= index < count:
        raise SweepError(f"--shard: expected i/n with 0 <= i < n, got {spec!r}")
    return Shard(index, count)


# ---------------------------------------------------------------------------------------------
# Run directories.


def is_sweep(module: ModuleType) -> bool:
    """Whether a study defines the points/run_point/assemble protocol (all three, or none)."""
    present = [hasattr(module, name) for name in _SWEEP]
    if any(present) and not all(present):
        raise StudyError(f"{module.__name__}: define all of {', '.join(_SWEEP)} or none of them")
    return all(present)


def check_study(module: ModuleType) -> None:
    """Raise :class:`StudyError` if ``module`` lacks a name the study contract requires."""
    missing = [name for name in _REQUIRED if not hasattr(module, name)]
    if missing:
        raise StudyError(f"{module.__name__}: not a study, missing {', '.join(missing)}")
    is_sweep(module)


def _call(study: str, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (CorruptRunError, SweepError, StudyError):
        raise
    except Exception as e:
        raise StudyError(f"{study}.{what} failed: {type(e).__name__}: {e}") from e


def read_manifest(run_dir: Path) -> dict | None:
    """The run directory's ``study.json``, or None if there is none."""
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or "study" not in manifest or "config" not in manifest:
        raise CorruptRunError(f"cannot read {path}: not a hessian-lab study manifest")
    return manifest


def _diff(old: Mapping, new: Mapping) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts[:3]) + (" ..." if len(parts) > 3 else "")


def check_run_dir(run_dir: Path, study: str, config: dict) -> dict | None:
    """Validate ``run_dir`` for a run of ``study`` with ``config``; return its manifest if any.

    Writes nothing. A new or empty directory is fine; so is one holding the same study and config.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise SweepError(f"out: {run_dir} exists and is not a directory")
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
            raise SweepError(f"out: {run_dir} is not empty and holds no {MANIFEST}")
        return None
    if manifest["study"] != study:
        raise SweepError(f"out: {run_dir} holds a run of {manifest['study']!r}, not {study!r}")
    if manifest["config"] != config:
        raise SweepError(
            f"out: {run_dir} holds a run with a different config ({_diff(manifest['config'], config)})"
            "; use a new --out or the same settings"
        )
    return manifest


def _write_manifest(run_dir: Path, study: str, config: dict, num_points: int | None, **extra):
    write_json(
        run_dir / MANIFEST,
        {
            "format": _FORMAT,
            "study": study,
            "config": config,
            "num_points": num_points,
            "environment": environment(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **extra,
        },
    )


def _npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise ValueError(f"array names must be non-empty strings without '/', got {key!r}")
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return buf.getvalue()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise CorruptRunError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _finished(run_dir: Path, points: list[dict]) -> set[int]:
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


def _write_point(run_dir: Path, index: int, point: dict, arrays: bytes, **meta: Any) -> None:
    folder = run_dir / "points"
    # Arrays first, description last: the .json is the "finished" mark.
    atomic_write_bytes(folder / f"{index}.npz", arrays)
    write_json(folder / f"{index}.json", {"index": index, "point": point, **meta})


def _clean_stale(run_dir: Path, indices: list[int]) -> None:
    # A SIGKILL inside atomic_write_bytes leaves its hidden temporary file behind.
    folder = run_dir / "points"
    if folder.is_dir():
        for index in indices:
            for tmp in folder.glob(f".{index}.*.tmp"):
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Running and merging.


def _finish(study: str, module: ModuleType, config: Any, run_dir: Path, n: int) -> Any:
    """Assemble all points of a sweep from ``run_dir/points`` and save the results."""
    point_results = [_load_npz(run_dir / "points" / f"{i}.npz") for i in range(n)]
    results = _call(study, "assemble", module.assemble, config, point_results)
    _call(study, "save", module.save, results, run_dir)
    return results


def execute(
    study: str,
    config: Any,
    run_dir: str | Path,
    *,
    shard: Shard = WHOLE,
    progress: Progress | None = None,
) -> Outcome:
    """Run ``study`` with ``config`` into ``run_dir``, resuming whatever is already there.

    A complete run directory (with ``config.json``) is loaded, not recomputed. For a sweep, only
    the points of ``shard`` are computed; the results are assembled and saved once every point
    of the sweep is present in ``run_dir``. ``progress(done, total)`` is called as points (or,
    for studies without points, the study's own steps) finish.

    Raises:
      SweepError, CorruptRunError: bad input or run directory; nothing has been written.
      StudyError: the study's code failed.
    """
    module = registry.get(study)
    check_study(module)
    if not isinstance(config, module.Config):
        raise SweepError(f"config: expected {module.__name__}.Config, got {type(config)}")
    run_dir = Path(run_dir)
    stored = config_to_dict(config)
    manifest = check_run_dir(run_dir, study, stored)
    complete = (run_dir / "config.json").exists()

    if not is_sweep(module):
        if complete:
            results = _call(study, "load", module.load, run_dir)
            return Outcome(run_dir, study, True, results, None, 0, 0)
        if manifest is None:
            _write_manifest(run_dir, study, stored, None)
        results = _call(study, "run", module.run, config, progress=progress)
        _call(study, "save", module.save, results, run_dir)
        return Outcome(run_dir, study, True, results, None, 0, 0)

    raw_points = _call(study, "points", module.points, config)
    points = _normalize(raw_points)
    n = len(points)
    done = _finished(run_dir, points)
    if complete:
        results = _call(study, "load", module.load, run_dir)
        return Outcome(run_dir, study, True, results, n, len(done), 0)
    if manifest is None:
        _write_manifest(run_dir, study, stored, n)
    mine = [i for i in range(n) if i % shard.count == shard.index]
    todo = [i for i in mine if i not in done]
    _clean_stale(run_dir, todo)
    finished_mine = len(mine) - len(todo)
    if progress is not None:
        progress(finished_mine, len(mine))
    for index in todo:
        start = time.perf_counter()
        arrays = _call(study, "run_point", module.run_point, config, raw_points[index])
        data = _call(study, "run_point", _npz_bytes, arrays)
        seconds = time.perf_counter() - start
        _write_point(
            run_dir, index, points[index], data, shard=f"{shard.index}/{shard.count}",
            seconds=round(seconds, 6),
        )  # fmt: skip
        done.add(index)
        finished_mine += 1
        if progress is not None:
            progress(finished_mine, len(mine))
    if len(done) < n:
        done = _finished(run_dir, points)  # other shards may share this directory
    if len(done) < n:
        return Outcome(run_dir, study, False, None, n, len(done), len(todo))
    results = _finish(study, module, config, run_dir, n)
    return Outcome(run_dir, study, True, results, n, n, len(todo))


def merge(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    progress: Progress | None = None,
) -> Outcome:
    """Gather the points of shard directories of one sweep into ``out`` and assemble them.

    All directories must hold the same study and config; together they must cover every point
    (a point found in several directories must have identical arrays). ``out`` may be new, empty,
    or a run directory of the same sweep.

    Raises:
      SweepError, CorruptRunError: mismatched, incomplete or unreadable inputs; nothing written.
      StudyError: the study's code failed.
    """
    if not run_dirs:
        raise SweepError("merge: give at least one shard directory")
    run_dirs = [Path(d) for d in run_dirs]
    out = Path(out)
    manifests = []
    for d in run_dirs:
        if not d.is_dir():
            raise SweepError(f"merge: {d} is not a directory")
        manifest = read_manifest(d)
        if manifest is None:
            raise SweepError(f"merge: {d} holds no {MANIFEST}; is it a hessian-lab run?")
        manifests.append(manifest)
    study, stored = manifests[0]["study"], manifests[0]["config"]
    for d, m in zip(run_dirs[1:], manifests[1:], strict=True):
        if m["study"] != study:
            raise SweepError(f"merge: {d} holds {m['study']!r}, {run_dirs[0]} holds {study!r}")
        if m["config"] != stored:
            raise SweepError(f"merge: {d} has a different config ({_diff(stored, m['config'])})")
    module = registry.get(study)
    check_study(module)
    if not is_sweep(module):
        raise SweepError(f"merge: study {study!r} has no sweep points to merge")
    config = config_from_dict(module, stored)
    if config_to_dict(config) != stored:
        raise SweepError(f"merge: the stored config of {run_dirs[0]} no longer reads back")
    points = _normalize(_call(study, "points", module.points, config))
    n = len(points)

    source: dict[int, Path] = {}
    for d in run_dirs:
        for index in sorted(_finished(d, points)):
            if index not in source:
                source[index] = d
                continue
            a = _load_npz(source[index] / "points" / f"{index}.npz")
            b = _load_npz(d / "points" / f"{index}.npz")
            same = a.keys() == b.keys() and all(
                np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc") for k in a
            )
            if not same:
                raise SweepError(f"merge: point {index} differs between {source[index]} and {d}")
    missing = [i for i in range(n) if i not in source]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise SweepError(f"merge: {len(missing)} of {n} points missing ({shown}); run their shards")
    manifest = check_run_dir(out, study, stored)
    existing = _finished(out, points) if manifest is not None else set()

    if manifest is None:
        _write_manifest(
            out, study, stored, n,
            merged_from=[{"dir": str(d), "environment": m.get("environment")}
                         for d, m in zip(run_dirs, manifests, strict=True)],
        )  # fmt: skip
    if progress is not None:
        progress(0, n)
    for index in range(n):
        src = source[index] / "points"
        if index not in existing and source[index].resolve() != out.resolve():
            meta = read_json(src / f"{index}.json")
            atomic_write_bytes(out / "points" / f"{index}.npz", (src / f"{index}.npz").read_bytes())
            write_json(out / "points" / f"{index}.json", meta)
        if progress is not None:
            progress(index + 1, n)
    if (out / "config.json").exists():
        results = _call(study, "load", module.load, out)
    else:
        results = _finish(study, module, config, out, n)
    return Outcome(out, study, True, results, n, n, 0)
