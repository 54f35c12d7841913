"""The study kit: the one contract every study follows, and the small pieces they all share.

A study is a module ``hessian_lab.studies.<name>`` (file ``studies/<name>.py``) with its figures in
``studies/<name>_plots.py``. docs/dev/studies.md walks through writing one. The module defines:

=================  =====================================================================
``NAME``           the registry name
``PAPER``          the paper it reproduces ("Cohen et al. 2021, arXiv 2103.00065")
``DOCS``           its docs page, relative to the repository root
``Config``         frozen dataclass; every field made with :func:`knob` (value + one line
                   of description), checked in ``__post_init__`` with :func:`need` and the
                   ``check_*`` helpers (:func:`check_finite` first: no NaN or inf anywhere)
``check_inputs``   optional ``check_inputs(config)``: what the Config alone cannot know,
                   checked before a run writes anything (data files load, Lanczos budgets
                   <= the model's parameter count, :func:`num_params`); ValueError names the field
``TINY/DEFAULT``   presets: seconds for the tests, minutes for the docs figures
``STORED_DEFAULTS`` optional ``{field: value}``: what a config.json saved before the field
                   existed means (else DEFAULT's value), for ``load``, resume and ``merge``
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
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from hessian_lab.io import CorruptRunError, load_run, read_json, save_run

__all__ = [
    "MAX_INT",
    "MAX_SEED",
    "Metric",
    "StepCounter",
    "check_budget",
    "check_choice",
    "check_finite",
    "check_int_tuple",
    "check_ints",
    "check_loads",
    "check_positive",
    "check_rates",
    "check_seeds",
    "compare",
    "describe",
    "fmt",
    "is_int",
    "knob",
    "need",
    "num_params",
    "persistence",
]

# Counts and sizes (steps, matvecs) are int32 inside JAX; larger ones would wrap or overflow.
MAX_INT = 2**31 - 1
# jax.random.key keeps the low 32 bits of a seed: 2**32 would silently be seed 0 again.
MAX_SEED = 2**32 - 1
# Hidden layers: a deeper MLP takes minutes just to trace (a million layers ran past 40 s in
# jax.eval_shape before any work); the studies' papers use at most a few dozen.
MAX_DEPTH = 1000

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


def check_ints(config: Any, *fields: str, minimum: int = 1, maximum: int = MAX_INT) -> None:
    """Each named field is an int in ``[minimum, maximum]`` (at most :data:`MAX_INT`)."""
    for f in fields:
        v = getattr(config, f)
        need(is_int(v) and v >= minimum, config, f, f"an int >= {minimum}")
        need(v <= maximum, config, f, f"an int <= {maximum}")


def check_int_tuple(
    config: Any,
    field: str,
    *,
    minimum: int = 1,
    maximum: int = MAX_INT,
    allow_empty: bool = False,
    distinct: bool = True,
) -> None:
    """The named field is a tuple of (distinct) ints in ``[minimum, maximum]``."""
    v = getattr(config, field)
    ok = isinstance(v, tuple | list) and (allow_empty or len(v) >= 1)
    ok = ok and all(is_int(x) and minimum <= x <= maximum for x in v)
    ok = ok and (not distinct or len(set(v)) == len(v))
    kind = ("a" if allow_empty else "a non-empty") + (
        " tuple of distinct" if distinct else " tuple of"
    )
    need(ok, config, field, f"{kind} ints in [{minimum}, {maximum}]")


def check_seeds(config: Any, *fields: str) -> None:
    """Each named field is a seed, or a non-empty tuple of distinct seeds, in [0, MAX_SEED]."""
    for f in fields:
        if isinstance(getattr(config, f), tuple | list):
            check_int_tuple(config, f, minimum=0, maximum=MAX_SEED)
        else:
            check_ints(config, f, minimum=0, maximum=MAX_SEED)


def check_finite(config: Any) -> None:
    """Every float of the Config, alone or inside a tuple, is finite (no NaN or inf).

    Called first in ``__post_init__``, so that a NaN is blamed on its own field and not on a
    comparison with it further down (``nan > x`` is False).
    """
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        items = v if isinstance(v, tuple | list) else (v,)
        floats = [x for x in items if isinstance(x, float | np.floating)]
        if any(not math.isfinite(x) for x in floats):
            allowed = "finite numbers" if items is v else "a finite number"
            need(False, config, f.name, allowed)


def check_budget(config: Any, field: str, limit: int, what: str) -> None:
    """The named field (an iteration or probe count) is at most ``limit`` (``what`` says why)."""
    need(getattr(config, field) <= limit, config, field, f"at most {limit} ({what})")


def check_loads(config: Any, field: str, load: Callable[[Any], Any]) -> None:
    """``load(value)`` of the named field (a data path) succeeds; else name the field and why.

    For the inputs that only reading them can check (the files exist, are readable and hold
    what they should), before a run writes anything.
    """
    v = getattr(config, field)
    try:
        load(v)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{field}: cannot load {v!r}: {' '.join(str(e).split())}") from None


def num_params(model: Any) -> int:
    """The number of parameters of ``model`` (``init(key)``), without allocating or computing them.

    ``jax.eval_shape`` traces ``init`` abstractly; it costs milliseconds and no memory, so budgets
    can be checked against it before any data is loaded or anything is compiled.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)))


def check_memory(config: Any, field: str, num_params: int, vectors: int) -> None:
    """The model's ``num_params`` times ``vectors`` float32 copies fits in this machine's memory.

    ``vectors`` counts what a run holds at once (params, gradient, optimizer state, a Lanczos
    basis of ``num_iters`` rows). Only gross mistakes are caught (a width that makes terabytes):
    the estimate is a floor, so passing it does not promise the run fits. Names ``field`` (the
    size knob, e.g. ``width``).
    """
    need_bytes = 4 * int(num_params) * int(vectors)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: nothing to compare against
        return
    gb = 1024**3
    need(
        need_bytes <= have,
        config,
        field,
        f"a size whose {num_params:,} parameters x {vectors} vectors "
        f"({need_bytes / gb:.3g} GiB) fit in this machine's {have / gb:.3g} GiB",
    )


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
        """Read back what ``save`` wrote; ``load(save(r))`` round-trips exactly.

        Raises:
          CorruptRunError: the directory holds another study's run, a config this study's
            Config refuses, or arrays that are missing or unreadable (each named).
        """
        cfg, arrays, _ = load_run(run_dir)
        kind = read_json(Path(run_dir) / "config.json").get("kind")
        if kind not in (None, name):
            raise CorruptRunError(f"{run_dir}: holds a run of {kind!r}, not of {name!r}")
        cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
        try:
            config = config_cls(**cfg)
        except (TypeError, ValueError) as e:
            raise CorruptRunError(f"{run_dir}: config.json is not a {name} config: {e}") from None
        missing = [k for k in fields if k not in arrays]
        if missing:
            raise CorruptRunError(
                f"{run_dir}: arrays.npz lacks {', '.join(missing)} (not a {name} run?)"
            )
        return results_cls(config=config, **{k: arrays[k] for k in fields})

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
