"""Checks of a training run's inputs, shared by the trainer and populations (issue #18).

Bad input is refused with a one-line ``ValueError`` naming the argument, so that "diverged"
keeps one meaning: finite, valid inputs whose loss or params blew up during training.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .history import STOP_REASONS
from .optim import set_hyperparams

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


def check_hyperparams(values, *, members: int | None = None) -> dict:
    """Raise ``ValueError`` naming ``hyperparams`` for values that are not finite numbers in range.

    ``learning_rate`` > 0; schedule lengths and values, ``eps``, ``weight_decay`` >= 0;
    ``momentum``, ``b1``, ``b2``, ``decay`` in [0, 1); any other name: finite. With
    ``members=P`` each value is a scalar or P values, and is returned broadcast to ``(P,)``.
    """
    out = {}
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"hyperparams: must be a dict name -> value, got {type(values).__name__}")
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
        if members is not None:
            if a.ndim > 1 or a.size not in (1, members):
                raise ValueError(f"hyperparams: {k!r} must be a scalar or {members} values")
            out[k] = np.broadcast_to(np.asarray(v), (members,))
    return out


def with_hyperparams(opt_state, hyperparams):
    """``opt_state`` with ``hyperparams`` set, refusing values that do not fit the stored ones."""
    try:
        opt_state = set_hyperparams(opt_state, hyperparams or {})
    except ValueError as e:
        if str(e).startswith(("hyperparams", "opt_state")):
            raise
        raise ValueError(f"hyperparams: must fit the optimizer's stored shapes ({e})") from None
    check_hyperparams(getattr(opt_state, "hyperparams", None))  # a state's own, e.g. loaded
    return opt_state


def check_members(learning_rates, seeds) -> tuple[np.ndarray, np.ndarray]:
    """A population's ``learning_rates`` (finite, > 0) and ``seeds`` (ints in [0, 2**32)), 1-D."""
    try:
        lrs, seeds = np.asarray(learning_rates, float), np.asarray(seeds)
    except (TypeError, ValueError):
        raise ValueError(f"learning_rates: must be real numbers, got {learning_rates!r}") from None
    if lrs.ndim != 1 or lrs.size == 0:
        raise ValueError(f"learning_rates: must be a non-empty 1-D array, got shape {lrs.shape}")
    if seeds.shape != lrs.shape or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(
            f"seeds: must be 1-D ints of the learning_rates' shape {lrs.shape}, "
            f"got {seeds.shape} {seeds.dtype}"
        )
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"learning_rates: must all be finite and > 0, got {lrs}")
    # Outside [0, 2**32) a seed aliases another (2**32 gives seed 0's key without x64).
    if seeds.min() < 0 or seeds.max() >= 2**32:
        raise ValueError(f"seeds: must lie in [0, 2**32), got range [{seeds.min()}, {seeds.max()}]")
    return lrs, seeds


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


def check_initial_loss(reasons, stop_steps, losses, threshold=None) -> None:
    """Raise when a run "diverged" at step 0: bad input, not divergence.

    Params, data and hyperparameters were checked finite, so a run that stops at step 0 had a
    non-finite loss at its initial params (e.g. labels outside a loss's range, which give NaN
    under ``jit``: named ``data``), or an initial loss already above ``divergence_threshold``
    (named so), or a first update that is NaN or inf from finite params and gradients: a NaN or
    inf constant inside the optimizer (``optax.sgd(nan)``), named ``optimizer``. The last two
    are raised only when every member stops so (one shared threshold and optimizer), so that in
    a sweep a member that starts above the threshold, or whose learning rate overflows in one
    step, is still recorded as diverged.
    ``reasons``/``stop_steps``: (P,) stop codes and steps; ``losses``: (P, T) loss histories.
    """
    reasons, stop_steps = np.atleast_1d(reasons), np.atleast_1d(stop_steps)
    first = np.asarray(losses)[:, 0]
    at_start = (reasons == STOP_REASONS.index("diverged")) & (stop_steps == 0)
    bad = at_start & ~np.isfinite(first)
    if np.any(bad):
        members = "" if bad.size == 1 else f" of members {np.flatnonzero(bad).tolist()}"
        raise ValueError(
            f"data: the loss{members} is {first[bad][0]} at the initial params (step 0, before "
            "any update) although params, data and hyperparameters are finite: bad input, not "
            "a divergence (labels outside the loss's range, e.g. cross_entropy's [0, k), give NaN)"
        )
    if threshold is not None and np.all(at_start & (first > threshold)):
        raise ValueError(
            f"divergence_threshold: {threshold} is below the initial loss "
            f"{float(np.max(first[at_start])):.6g} (step 0), so every run would count as diverged "
            "before any update; raise it or leave it None (only non-finite losses diverge)"
        )
    if np.all(at_start):
        raise ValueError(
            "optimizer: its first update is NaN or inf although the params, the data and the "
            "loss and gradient at step 0 are finite: a NaN or inf constant inside the optimizer "
            "(e.g. optax.sgd(float('nan'))); pass the learning rate as hyperparams= to have it "
            "checked by name"
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


def check_params(params) -> None:
    """Raise naming ``params`` when they hold no arrays or a float leaf holds NaN/inf."""
    if not jax.tree.leaves(params):
        raise ValueError(f"params: must hold at least one array, got {params!r}")
    check_finite("params", params)


def check_opt_state(optimizer, params, opt_state) -> None:
    """Raise naming ``opt_state`` when it is not shaped like ``optimizer.init(params)`` or holds NaN.

    The reference is traced (``jax.eval_shape``), not computed. A state of another optimizer, or
    of params of other shapes, would otherwise train silently or fail deep inside the step.
    """
    want = jax.eval_shape(optimizer.init, params)
    if jax.tree.structure(want) != jax.tree.structure(opt_state):
        raise ValueError(
            f"opt_state: structure differs from optimizer.init(params)'s: "
            f"got {jax.tree.structure(opt_state)}, expected {jax.tree.structure(want)}"
        )
    flat = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    for (path, got), ref in zip(flat, jax.tree.leaves(want), strict=True):
        if np.shape(got) != ref.shape:
            raise ValueError(
                f"opt_state: leaf {jax.tree_util.keystr(path)} has shape {np.shape(got)}, "
                f"optimizer.init(params) gives {ref.shape}"
            )
    check_finite("opt_state", opt_state, allow_inf=True)
