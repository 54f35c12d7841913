"""Save and load a study's dataclass ``Results`` to a run directory, shared by every study.

A ``Results`` dataclass holds ``config`` (a frozen ``Config`` dataclass) and named numpy
arrays. ``config.json`` stores the config (lists come back as tuples), ``arrays.npz`` the arrays
and ``summary.json`` the key numbers, all written atomically by :func:`hessian_lab.io.save_run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hessian_lab.io import load_run, save_run


def array_fields(results_cls: type) -> list[str]:
    """Names of a ``Results`` dataclass's fields other than ``config``."""
    return [f.name for f in dataclasses.fields(results_cls) if f.name != "config"]


def save_results(
    results: Any, run_dir: str | Path, *, kind: str, summary: Mapping[str, Any]
) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    arrays = {k: getattr(results, k) for k in array_fields(type(results))}
    save_run(
        run_dir,
        config=dataclasses.asdict(results.config),
        arrays=arrays,
        summary=summary,
        kind=kind,
    )


def load_results(run_dir: str | Path, results_cls: type, config_cls: type) -> Any:
    """Read back what :func:`save_results` wrote; ``load(save(r))`` round-trips exactly."""
    cfg, arrays, _ = load_run(run_dir)
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    fields = array_fields(results_cls)
    return results_cls(config=config_cls(**cfg), **{k: arrays[k] for k in fields})
