"""The study kit: the one contract every study follows, and the small pieces they all share.

A study is a module ``hessian_lab.studies.<name>`` (file ``studies/<name>.py``) with its figures in
``studies/<name>_plots.py``. docs/dev/studies.md walks through writing one. The module defines:

=================  =====================================================================
``NAME``           the registry name
``PAPER``          the paper it reproduces ("Cohen et al. 2021, arXiv 2103.00065")
``DOCS``           its docs page, relative to the repository root
``Config``         frozen dataclass; every field made with :func:`knob` (value + one line
                   of description), checked in ``__post_init__`` with :func:`need`
``TINY/DEFAULT``   presets: seconds for the tests, minutes for the docs figures
``Results``        dataclass: ``config`` plus numpy arrays (saved as ``arrays.npz``)
``run``            ``run(config, *, progress=None) -> Results``, no I/O; ``progress(done,
                   total)`` counts training steps (see :class:`StepCounter`)
``points`` ...     optional sweep: ``points(config)``, ``run_point(config, point, *,
                   progress=None)``, ``assemble(config, outs)``
``METRICS``        ``{name: Metric(description, unit)}``: every key ``summary`` returns
``summary``        ``summary(results) -> {name: scalar or {run label: scalar}}``
``verdict``        ``verdict(results) -> [sentence, ...]``: what was reproduced, our number
                   beside the paper's (:func:`compare`)
``figures``        ``figures(results) -> {name: Figure}`` from ``<name>_plots``
``save/load``      ``save, load = kit.persistence(NAME, Results, Config, summary)``
=================  =====================================================================

Example:
  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class Config:
  ...     lr: float = knob(0.1, "learning rate eta")
  ...     def __post_init__(self):
  ...         need(self.lr > 0, self, "lr", "> 0")
  >>> describe(Config)
  {'lr': 'learning rate eta'}
  >>> Config(lr=-1.0)
  Traceback (most recent call last):
  ...
  ValueError: lr: must be > 0, got -1.0
  >>> compare("median eta*lambda", 2.04, "Cohen et al.", "~2", ok=True)
  'median eta*lambda: 2.04 (Cohen et al.: ~2) - reproduced'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hessian_lab.io import load_run, save_run

__all__ = [
    "Metric",
    "StepCounter",
    "check_choice",
    "check_ints",
    "check_positive",
    "check_rates",
    "compare",
    "describe",
    "fmt",
    "is_int",
    "knob",
    "need",
    "persistence",
]

Progress = Callable[[int, int], None]


class Metric(NamedTuple):
    """A summary metric: what it measures, in words, and its unit ("" if dimensionless)."""

    description: str
    unit: str = ""


def knob(default: Any, doc: str) -> Any:
    """A Config field with its one-line description (shown by ``study show`` and reports)."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def describe(config_cls: type) -> dict[str, str]:
    """``{field: description}`` of a Config dataclass, in field order.

    A subclass that only changes a default (``lrs: tuple = (0.3,)``) inherits the description of
    the field it overrides.
    """
    docs: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        if dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                if f.metadata.get("doc"):
                    docs[f.name] = f.metadata["doc"]
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(config_cls)}


def need(ok: bool, config: Any, field: str, allowed: str) -> None:
    """Raise ``ValueError("<field>: must be <allowed>, got <value>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{field}: must be {allowed}, got {getattr(config, field)!r}")


def is_int(v: Any) -> bool:
    """``v`` is an integer (numpy ints included), not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def check_ints(config: Any, *fields: str, minimum: int = 1) -> None:
    """Each named field is an int >= ``minimum``."""
    for f in fields:
        v = getattr(config, f)
        need(is_int(v) and v >= minimum, config, f, f"an int >= {minimum}")


def check_positive(config: Any, *fields: str, allow_zero: bool = False) -> None:
    """Each named field is a finite number > 0 (>= 0 with ``allow_zero``)."""
    for f in fields:
        v = getattr(config, f)
        ok = isinstance(v, int | float | np.number) and not isinstance(v, bool)
        ok = ok and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
        need(ok, config, f, "a finite number " + (">= 0" if allow_zero else "> 0"))


def check_choice(config: Any, field: str, choices: Iterable[Any]) -> None:
    """The named field is one of ``choices``."""
    choices = tuple(choices)
    need(
        getattr(config, field) in choices, config, field, "one of " + ", ".join(map(repr, choices))
    )


def check_rates(config: Any, field: str, *, allow_empty: bool = False) -> None:
    """The named field is a tuple of finite positive numbers (non-empty unless ``allow_empty``)."""
    v = getattr(config, field)
    try:
        a = np.asarray(v, float)
    except (TypeError, ValueError):
        a = np.asarray([np.nan])
    ok = isinstance(v, tuple | list) and a.ndim == 1 and (allow_empty or a.size >= 1)
    ok = ok and bool(np.all(np.isfinite(a) & (a > 0)))
    need(
        ok,
        config,
        field,
        "a " + ("" if allow_empty else "non-empty ") + "tuple of positive numbers",
    )


def fmt(x: Any, digits: int = 3) -> str:
    """A number as a reader wants it: ``2.04``, ``1.2e-05``, ``nan``; bools and ints as they are."""
    if isinstance(x, bool | np.bool_) or is_int(x):
        return str(x)
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def compare(what: str, ours: Any, paper: str, reference: str, *, ok: bool | None) -> str:
    """One verdict sentence: ``"<what>: <ours> (<paper>: <reference>) - reproduced"``.

    ``ok=None`` states the numbers without a judgement (e.g. nothing to compare against yet).
    """
    ours = ours if isinstance(ours, str) else fmt(ours)
    tail = "" if ok is None else (" - reproduced" if ok else " - NOT reproduced")
    return f"{what}: {ours} ({paper}: {reference}){tail}"


def persistence(
    name: str, results_cls: type, config_cls: type, summary: Callable[[Any], Mapping[str, Any]]
) -> tuple[Callable[[Any, str | Path], None], Callable[[str | Path], Any]]:
    """A study's ``save(results, run_dir)`` and ``load(run_dir)``.

    ``save`` writes ``config.json`` (the config), ``arrays.npz`` (every other field of
    ``results``) and ``summary.json`` atomically; ``load`` reads them back exactly (lists in the
    config come back as tuples).
    """
    fields = [f.name for f in dataclasses.fields(results_cls) if f.name != "config"]

    def save(results: Any, run_dir: str | Path) -> None:
        """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
        arrays = {k: getattr(results, k) for k in fields}
        save_run(
            run_dir,
            config=dataclasses.asdict(results.config),
            arrays=arrays,
            summary=summary(results),
            kind=name,
        )

    def load(run_dir: str | Path) -> Any:
        """Read back what ``save`` wrote; ``load(save(r))`` round-trips exactly."""
        cfg, arrays, _ = load_run(run_dir)
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        missing = [k for k in fields if k not in arrays]
        if missing:
            raise ValueError(
                f"{run_dir}: arrays.npz lacks {', '.join(missing)} (not a {name} run?)"
            )
        return results_cls(config=config_cls(**cfg), **{k: arrays[k] for k in fields})

    return save, load


class StepCounter:
    """Report training steps done over several trainer calls as one ``progress(done, total)``.

    A study knows its total work up front (members x steps, summed over its populations); each
    trainer call gets ``counter.part(size)``, a callback that maps that call's own
    ``(done, total)`` onto the study's. ``progress=None`` makes every part a no-op.

    Example:
      >>> seen = []
      >>> c = StepCounter(30, lambda d, t: seen.append((d, t)))
      >>> a, b = c.part(10), c.part(20)
      >>> a(10, 10); b(5, 20); b(20, 20)
      >>> seen
      [(10, 30), (15, 30), (30, 30)]
    """

    def __init__(self, total: int, progress: Progress | None):
        self.total, self.progress, self._next = int(total), progress, 0

    def part(self, size: int) -> Progress | None:
        """A progress callback for the next ``size`` steps of work (None if nobody listens)."""
        offset, self._next = self._next, self._next + int(size)
        if self.progress is None:
            return None
        progress, total = self.progress, self.total

        def report(done: int, local_total: int) -> None:
            scaled = done if local_total == size else round(done * size / max(local_total, 1))
            progress(min(offset + scaled, total), total)

        return report

    def finish(self) -> None:
        """Report the whole total as done (e.g. after runs that stopped early)."""
        if self.progress is not None:
            self.progress(self.total, self.total)
