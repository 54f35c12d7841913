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

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from hessian_lab.io import (
    CorruptRunError,
    atomic_write_bytes,
    npz_bytes,
    read_json,
    read_npz,
    write_json,
)

from . import registry, rundir
from .configs import (
    SweepError,
    config_from_dict,
    config_to_dict,
    field_types,
    normalize,
    preset,
    presets,
    read_overrides,
    replace_checked,
    with_overrides,
)
from .rundir import MANIFEST, check_run_dir, read_manifest

__all__ = [
    "MANIFEST",
    "Outcome",
    "Shard",
    "StudyError",
    "SweepError",
    "call",
    "check_inputs",
    "check_run_dir",
    "config_from_dict",
    "config_to_dict",
    "execute",
    "field_types",
    "is_sweep",
    "merge",
    "normalize",
    "parse_shard",
    "preset",
    "presets",
    "read_manifest",
    "read_overrides",
    "replace_checked",
    "with_overrides",
]

_REQUIRED = ("Config", "TINY", "DEFAULT", "run", "save", "load", "figures", "summary")
_SWEEP = ("points", "run_point", "assemble")

Progress = Callable[[int, int], None]


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


def check_inputs(study: str, module: ModuleType, config: Any) -> None:
    """The study's optional ``check_inputs(config)`` (data paths, budgets), as a usage error.

    Raises:
      SweepError: the study refused an input (its ValueError names the field).
    """
    check = getattr(module, "check_inputs", None)
    if check is None:
        return
    try:
        check(config)
    except ValueError as e:
        raise SweepError(str(e)) from e
    except Exception as e:
        raise StudyError(f"{study}.check_inputs failed: {type(e).__name__}: {e}") from e


def call(study: str, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, a study's own code: its failures become :class:`StudyError`."""
    try:
        return fn(*args, **kwargs)
    except (CorruptRunError, SweepError, StudyError):
        raise
    except Exception as e:
        raise StudyError(f"{study}.{what} failed: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------------------------------
# Running and merging.


def _finish(study: str, module: ModuleType, config: Any, run_dir: Path, n: int) -> Any:
    """Assemble all points of a sweep from ``run_dir/points`` and save the results."""
    point_results = [read_npz(run_dir / "points" / f"{i}.npz") for i in range(n)]
    results = call(study, "assemble", module.assemble, config, point_results)
    call(study, "save", module.save, results, run_dir)
    return results


def _takes_progress(fn: Callable) -> bool:
    """Whether ``fn`` accepts ``progress=`` (studies gain it one by one; none is required)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "progress" or p.kind is p.VAR_KEYWORD for p in params)


def execute(
    study: str,
    config: Any,
    run_dir: str | Path,
    *,
    shard: Shard = WHOLE,
    progress: Progress | None = None,
    steps: Progress | None = None,
) -> Outcome:
    """Run ``study`` with ``config`` into ``run_dir``, resuming whatever is already there.

    A complete run directory (with ``config.json``) is loaded, not recomputed. For a sweep, only
    the points of ``shard`` are computed; the results are assembled and saved once every point
    of the sweep is present in ``run_dir``.

    Two progress callbacks, ``(done, total)`` each: ``progress`` counts this shard's sweep points
    (called once before the first point and after each one; never for a study without points),
    and ``steps`` is handed to the study's ``run`` (or to each ``run_point`` whose signature
    takes ``progress``), which counts the training steps of that run or point.

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
    if not complete:
        check_inputs(study, module, config)

    if not is_sweep(module):
        if complete:
            results = call(study, "load", module.load, run_dir)
            return Outcome(run_dir, study, True, results, None, 0, 0)
        with rundir.locked(run_dir, "0/1"):
            rundir.clean_temporaries(run_dir)
            if manifest is None:
                rundir.write_manifest(run_dir, study, stored, None)
            results = call(study, "run", module.run, config, progress=steps)
            call(study, "save", module.save, results, run_dir)
        return Outcome(run_dir, study, True, results, None, 0, 0)

    raw_points = call(study, "points", module.points, config)
    points = normalize(raw_points)
    n = len(points)
    if shard.count > n:
        raise SweepError(
            f"--shard: {study} has {n} sweep point{'s' * (n != 1)}, so N in I/N must be at "
            f"most {n}, got {shard.index}/{shard.count}"
        )
    done = rundir.finished(run_dir, points)
    if complete:
        results = call(study, "load", module.load, run_dir)
        return Outcome(run_dir, study, True, results, n, len(done), 0)
    with rundir.locked(run_dir, f"{shard.index}/{shard.count}"):
        return _sweep(study, module, config, run_dir, manifest, stored, points, raw_points,
                      shard, progress, steps)  # fmt: skip


def _sweep(study, module, config, run_dir, manifest, stored, points, raw_points, shard, progress,
           steps) -> Outcome:  # fmt: skip
    n = len(points)
    done = rundir.finished(run_dir, points)  # again, now that this shard holds the lock
    if manifest is None:
        rundir.write_manifest(run_dir, study, stored, n)
    if shard.count == 1:  # alone in the directory: no other shard is mid-write
        rundir.clean_temporaries(run_dir)
    mine = [i for i in range(n) if i % shard.count == shard.index]
    todo = [i for i in mine if i not in done]
    rundir.clean_stale(run_dir, todo)
    finished_mine = len(mine) - len(todo)
    if progress is not None:
        progress(finished_mine, len(mine))
    forward = {"progress": steps} if steps is not None and _takes_progress(module.run_point) else {}
    for index in todo:
        start = time.perf_counter()
        arrays = call(study, "run_point", module.run_point, config, raw_points[index], **forward)
        data = call(study, "run_point", npz_bytes, arrays)
        seconds = time.perf_counter() - start
        rundir.write_point(
            run_dir, index, points[index], data, shard=f"{shard.index}/{shard.count}",
            seconds=round(seconds, 6),
        )  # fmt: skip
        done.add(index)
        finished_mine += 1
        if progress is not None:
            progress(finished_mine, len(mine))
    if len(done) < n:
        done = rundir.finished(run_dir, points)  # other shards may share this directory
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
            raise SweepError(
                f"merge: {d} has a different config ({rundir.diff(stored, m['config'])})"
            )
    module = registry.get(study)
    check_study(module)
    if not is_sweep(module):
        raise SweepError(f"merge: study {study!r} has no sweep points to merge")
    config = config_from_dict(module, stored)
    if config_to_dict(config) != stored:
        raise SweepError(f"merge: the stored config of {run_dirs[0]} no longer reads back")
    points = normalize(call(study, "points", module.points, config))
    n = len(points)

    source: dict[int, Path] = {}
    for d in run_dirs:
        for index in sorted(rundir.finished(d, points)):
            if index not in source:
                source[index] = d
                continue
            a = read_npz(source[index] / "points" / f"{index}.npz")
            b = read_npz(d / "points" / f"{index}.npz")
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
    rundir.check_writable(out)
    existing = rundir.finished(out, points) if manifest is not None else set()

    if manifest is None:
        rundir.write_manifest(
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
        results = call(study, "load", module.load, out)
    else:
        results = _finish(study, module, config, out, n)
    return Outcome(out, study, True, results, n, n, 0)
