"""Checks of a training run's inputs, shared by the trainer and populations (issue #18).

Bad input is refused with a one-line ``ValueError`` naming the argument, so that "diverged"
keeps one meaning: finite, valid inputs whose loss or params blew up during training.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from .history import STOP_REASONS

# Steps are counted in int32 inside the compiled chunk.
MAX_STEP = 2**31 - 1
# Bounds of the injected hyperparameters of hessian_lab.optim.make_optimizer (others: finite).
_POSITIVE = ("learning_rate",)
_NON_NEGATIVE = ("eta_init", "warmup_steps", "decay_steps", "eta_final", "eps", "weight_decay")
_UNIT = ("momentum", "b1", "b2", "decay")


def check_finite(name: str, tree, *, allow_inf: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` and the leaf when a float leaf holds NaN (or inf).

    Concrete trees only (the host side of :func:`train`); integer leaves are not checked.
    """
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(x, "dtype") and not isinstance(x, numbers.Number):
            continue
        dt = jnp.result_type(x)
        if not jnp.issubdtype(dt, jnp.inexact):
            continue
        a = x if isinstance(x, jax.Array) else np.asarray(x)
        bad = jnp.isnan(a) if allow_inf else ~jnp.isfinite(a)
        count = int(jnp.sum(bad))
        if count:
            where = jax.tree_util.keystr(path) or "(root)"
            what = "NaN" if allow_inf else "NaN/inf"
            raise ValueError(f"{name}: leaf {where} holds {count} {what} value(s)")


def check_hyperparams(values) -> None:
    """Raise ``ValueError`` naming ``hyperparams`` for values that are not finite numbers in range.

    ``learning_rate`` > 0; schedule lengths and values, ``eps``, ``weight_decay`` >= 0;
    ``momentum``, ``b1``, ``b2``, ``decay`` in [0, 1); any other name: finite. Scalars or
    arrays (one value per population member).
    """
    for k, v in (values or {}).items():
        kind = np.asarray(v).dtype.kind if not isinstance(v, str) else "U"
        if kind not in "biuf" or isinstance(v, bool):
            raise ValueError(f"hyperparams: {k!r} must be a real number, got {v!r}")
        a = np.asarray(v, dtype=float)
        if k in _POSITIVE:
            ok, allowed = a > 0, "finite and > 0"
        elif k in _NON_NEGATIVE:
            ok, allowed = a >= 0, "finite and >= 0"
        elif k in _UNIT:
            ok, allowed = (a >= 0) & (a < 1), "in [0, 1)"
        else:
            ok, allowed = True, "finite"
        if not np.all(ok & np.isfinite(a)):
            raise ValueError(f"hyperparams: {k!r} must be {allowed}, got {v!r}")


def check_real(name: str, v) -> None:
    """Raise naming ``name`` unless ``v`` is None or a real scalar that is not NaN (inf allowed)."""
    if v is None:
        return
    try:
        ok = not isinstance(v, bool | str | bytes) and np.ndim(v) == 0 and not np.isnan(float(v))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: must be a real number (inf allowed) or None, got {v!r}")


def check_key(key) -> None:
    """Raise naming ``key`` unless it is a typed PRNG key or a raw uint32 (2,) key."""
    ok = isinstance(key, jax.Array) and (
        (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ())
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    )
    if not ok:
        raise ValueError(
            f"key: must be None or a PRNG key from jax.random.key, got {type(key).__name__}"
        )


def check_initial_loss(reasons, stop_steps, losses) -> None:
    """Raise when a run "diverged" at step 0 because its loss was non-finite at the initial params.

    Params, data and hyperparameters were checked finite, and no update was applied, so this is
    bad input (e.g. labels outside a loss's range, which give NaN under ``jit``), not divergence.
    ``reasons``/``stop_steps``: (P,) stop codes and steps; ``losses``: (P, T) loss histories.
    """
    reasons, stop_steps = np.atleast_1d(reasons), np.atleast_1d(stop_steps)
    first = np.asarray(losses)[:, 0]
    bad = (reasons == STOP_REASONS.index("diverged")) & (stop_steps == 0) & ~np.isfinite(first)
    if np.any(bad):
        members = "" if bad.size == 1 else f" of members {np.flatnonzero(bad).tolist()}"
        raise ValueError(
            f"data: the loss{members} is {first[bad][0]} at the initial params (step 0, before "
            "any update) although params, data and hyperparameters are finite: bad input, not "
            "a divergence (labels outside the loss's range, e.g. cross_entropy's [0, k), give NaN)"
        )


def check_data(data, batch_size) -> None:
    """Raise naming ``data`` (or ``batch_size``) for no arrays, unequal lengths, n = 0, NaN/inf."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(
            "data: must be a pytree of arrays with a leading example axis, got no arrays"
        )
    shapes = [np.shape(x) for x in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(
            f"data: every array needs the same leading (example) axis, got shapes {shapes}"
        )
    n = shapes[0][0]
    if n == 0:
        raise ValueError(f"data: holds no examples (shapes {shapes}); need n >= 1")
    check_finite("data", data)
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"batch_size: the step's batch_size {batch_size} exceeds the {n} examples of data; "
            f"use None (full batch) or an int in [1, {n}]"
        )
