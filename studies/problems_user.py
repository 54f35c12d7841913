"""The user's own problem in a study: the Config fields ``problem``, ``data``, ``problem_args``.

A study that trains a network offers them beside its built-in MLP (re-exported by
:mod:`hessian_lab.studies.problems`):

* ``problem``: an entry point ``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` returning
  ``(model, loss, data)`` (:mod:`hessian_lab.problem`); empty for the built-in MLP;
* ``data``: a data spec (:func:`hessian_lab.data.parse_data`), stored with its split named;
* ``problem_args``: the function's arguments, ``("width=64", "depth=2")``.

:func:`check_problem_fields` checks their syntax in ``Config.__post_init__`` (no file is read, so
a stored config still loads once the files are gone); :func:`checked_model` builds the problem in
``check_inputs``, before anything is written; :func:`user_problem_of` builds it for the run.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import numpy as np

from hessian_lab import data as hd
from hessian_lab import problem as hp
from hessian_lab.problem import Problem

from . import kit

__all__ = ["ARGS_DOC", "DATA_DOC", "MLP_FIELDS", "PROBLEM_DOC", "check_problem_fields"]
__all__ += ["builtin_data", "check_seeds_vary", "checked", "checked_model", "label", "user_problem"]
__all__ += ["STATE_STUDIES", "user_problem_of"]

PROBLEM_DOC = "your FILE.py:FUNCTION (or module:FUNCTION) -> model, loss, data; empty: built in"
DATA_DOC = "data spec: digits, mnist:DIR, cifar10:DIR or npz:FILE (?split=test: the test split)"
ARGS_DOC = "arguments of the problem function, NAME=VALUE"
# Fields that describe the built-in MLP: unused (and so refused when changed) with a problem.
MLP_FIELDS = ("depth", "width", "activation", "param", "normalization")
_DIGITS = 1797  # examples in sklearn's digits
# The studies whose training carries model state (BatchNorm statistics): the SharpnessRunner's
# and critical_sharpness's populations thread it; the others refuse a model with state.
STATE_STUDIES = ("edge_of_stability", "momentum", "critical_sharpness")


def user_problem(
    entry: str,
    *,
    data: str = "digits",
    args=(),
    seed: int = 0,
    n: int | None = None,
    stateful: bool = False,
    study: str = "this study",
) -> Problem:
    """The problem an entry point returns (:func:`hessian_lab.problem.build`), on a data spec.

    The data (their first ``n`` examples) are loaded only for a function that declares ``data``;
    one that does not brings its own, and then ``data`` must be left at "digits" (the default),
    never silently unused. ``stateful`` accepts a model with state (BatchNorm, dropout): the
    problem then holds a StatefulModel, a StatefulLoss and the initial ``state``, which only a
    caller that threads state may take; without it such a model is refused in words, naming
    ``study`` and the studies that take it (:data:`STATE_STUDIES`). Errors name ``problem``,
    ``data``, ``problem_args`` (or ``n``).
    """
    fn = hp.load_entry(entry)
    spec = hd.parse_data(data)
    try:
        takes_data = "data" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_data = False
    if not takes_data and spec.kind != "digits":
        raise ValueError(
            f"data: {entry} takes no `data` argument, so {str(spec)!r} would be unused"
        )
    ds = hd.load_data(spec, n=n) if takes_data else None
    about = spec.describe(len(ds.x)) if takes_data else None
    # Built as stateful always, so that a model with state is refused here, naming the study.
    built = hp.build(
        fn, data=ds, args=args, seed=seed, data_description=about, label=entry, stateful=True
    )
    if built.state is not None and not stateful:
        if hp.carries_state(built.state):
            raise ValueError(
                f"problem: {entry} has model state (BatchNorm statistics, dropout), which {study} "
                f"does not carry; {', '.join(STATE_STUDIES)} and `hessian-lab sharpness` take it"
            )
        # nothing to carry (a module with dropout and no other state, or a linen `train`
        # argument): the stateless build, with dropout off as in every study
        built = hp.build(fn, data=ds, args=args, seed=seed, data_description=about, label=entry)
    return built


def user_problem_of(config: Any, n: int | None, *, stateful: bool = False) -> Problem:
    """:func:`user_problem` of a Config's ``problem``, ``data``, ``problem_args`` and ``seed``."""
    return user_problem(
        config.problem,
        data=config.data,
        args=config.problem_args,
        seed=config.seed,
        n=n,
        stateful=stateful,
    )


def builtin_data(
    data: str, n: int, *, standardize: str | None = None, dtype: Any = np.float64
) -> hd.Dataset:
    """The first ``n`` examples of a data spec as a built-in MLP takes them.

    Inputs flattened, targets one-hot (10 classes for MNIST and CIFAR-10, else the largest label
    + 1), then ``standardize`` ("feature", "sample" or None, :func:`hessian_lab.data.preprocess`)
    in ``dtype``. On digits it is :func:`hessian_lab.data.digits` itself.
    """
    spec = hd.parse_data(data)
    if spec.kind == "digits":
        return hd.digits(n=n, standardize=standardize, dtype=dtype)
    raw = hd.load_data(spec, n=n)
    k = 10 if spec.kind in ("mnist", "cifar10") else int(raw.y.max()) + 1
    y = hd.to_one_hot(raw.y, k, dtype) if raw.y.ndim == 1 else raw.y
    ds = hd.Dataset(np.asarray(raw.x, dtype).reshape(len(raw.x), -1), y)
    return hd.preprocess(ds, standardize=standardize, dtype=dtype)


def label(config: Any) -> str:
    """A reader's name for the user's problem: ``"my_problem.py:make"`` (folders dropped)."""
    where, _, function = config.problem.rpartition(":")
    return f"{where.replace(chr(92), '/').rsplit('/', 1)[-1]}:{function}"


def check_seeds_vary(problem: Problem, config: Any, field: str) -> None:
    """Refuse several seeds when the user's model ignores the init key (``field`` names them).

    nnx and equinox modules arrive initialised (:mod:`hessian_lab.problem`): ``init(key)``
    returns the same parameters for every key, so every seed would repeat one run. Runs
    ``init`` for two keys (the parameters once more, nothing compiled).
    """
    seeds = getattr(config, field)
    if (len(seeds) if isinstance(seeds, tuple | list) else seeds) < 2:
        return
    a, b = (problem.model.init(jax.random.key(k)) for k in (0, 1))
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    same = all(bool(np.array_equal(u, v)) for u, v in pairs)
    kit.need(not same, config, field, "one seed: the model of problem ignores the init key "
             "(an nnx or equinox module arrives initialised), so every seed would repeat one "
             "run; vary its `seed` argument through problem_args instead")  # fmt: skip


def checked(config: Any, build: Any, n_field: str) -> Any:
    """``build(config)``, to check it before any work, if it reads any file; else None.

    For the user's problem or a data spec other than digits (None for the built-in digits
    problem). Errors name ``problem``, ``data``, ``problem_args``, or ``n_field`` (the number of
    examples kept).
    """
    if not config.problem and config.data.startswith("digits"):
        return None
    try:
        return build(config)
    except ValueError as e:
        msg = str(e)
        if msg.startswith("n:"):
            raise ValueError(f"{n_field}:{msg[2:]}") from None
        raise ValueError(msg if msg.startswith(("problem", "data")) else f"data: {msg}") from None


def checked_model(config: Any, build: Any, n_field: str) -> Any:
    """The model of :func:`checked` ``(config, build, n_field)`` (for the budgets), or None."""
    built = checked(config, build, n_field)
    return None if built is None else built.model


def check_problem_fields(
    config: Any, builtin: tuple[str, ...] = (), *, n_field: str, preset: Any = None
) -> None:
    """Check a Config's ``problem``, ``data``, ``problem_args`` (syntax only; no file is read).

    ``data`` is rewritten in canonical form, split named (``mnist:DIR?split=train``), so the
    stored config records the split. With ``problem`` set, the ``builtin`` fields must keep their
    defaults (or the values ``preset``, a mapping, gives them: the TINY preset's, so that
    ``--preset tiny --set problem=...`` works): the user's function takes its own arguments in
    ``problem_args``. On digits,
    ``n_field`` is at most 1797. A Config with the older ``cifar_path`` field keeps ``data`` at
    digits when that is set. Raises ValueError naming the field.
    """
    object.__setattr__(config, "data", str(hd.parse_data(config.data)))
    kit.need(isinstance(config.problem, str), config, "problem", "a string")
    if config.problem:
        hp.parse_entry(config.problem)
    hp.parse_args(config.problem_args)
    if config.problem:
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for f in builtin:
            if getattr(config, f) not in (defaults[f], (preset or {}).get(f, defaults[f])):
                raise ValueError(
                    f"{f}: describes the built-in MLP and is unused with problem set; pass "
                    f"your function's arguments as problem_args=NAME=VALUE,..."
                )
    else:
        kit.need(not config.problem_args, config, "problem_args", "empty unless problem is set")
    cifar = getattr(config, "cifar_path", None) is not None
    digits = config.data.startswith("digits")
    kit.need(not cifar or digits, config, "data", "digits (the default) when cifar_path is set")
    n = getattr(config, n_field)
    kit.need(
        cifar or not digits or n <= _DIGITS, config, n_field, f"<= {_DIGITS} (the size of digits)"
    )
