"""Optimizers whose hyperparameters, learning-rate schedule included, are arrays in the state.

Every optimizer built by :func:`make_optimizer` is wrapped in ``optax.inject_hyperparams``, so
its hyperparameters live in ``opt_state.hyperparams`` as arrays. A sweep changes them there (or
through ``hyperparams=`` of :func:`hessian_lab.trainer.train`) and the jitted step never
recompiles.

Schedules are data, not closures. Every schedule is one member of a single family,

    eta_t = eta_init + (eta_peak - eta_init) t / T_wrm                        for t < T_wrm,
    eta_t = eta_final + (eta_peak - eta_final) (1 + cos(pi min(t - T_wrm, T_dec) / T_dec)) / 2
                                                                           for t >= T_wrm,

with ``T_dec = 0`` meaning "constant eta_peak after warmup". Its five numbers are injected
hyperparameters named ``eta_init``, ``learning_rate`` (= eta_peak = eta_trgt), ``warmup_steps``,
``decay_steps`` and ``eta_final``; ``t`` is the number of updates applied so far. A constant
rate, a linear warmup (Kalra & Barkeshli 2024, arXiv 2406.09405) and a cosine decay are all
points of this family, so even switching between them does not recompile.

GI-Adam (arXiv 2406.09405): Adam whose second moment starts at g0^2, the squared gradient at
initialisation, with both bias corrections kept. Its first update is therefore
``-eta g0 / (|g0| / sqrt(1 - b2) + eps)``, about ``sqrt(1 - b2)`` times Adam's -- a built-in warmup.

Example:
    >>> opt = make_optimizer("adam", learning_rate=linear_warmup(1e-4, 1e-2, 100))
    >>> state = opt.init({"w": jnp.zeros(3)})
    >>> round(float(current_learning_rate(state)), 8)
    0.0001
"""

from __future__ import annotations

import inspect
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS",
    "ScaleByGIAdamState",
    "Schedule",
    "constant",
    "cosine_decay",
    "current_learning_rate",
    "gi_adam_init",
    "gi_adam_nu",
    "linear_warmup",
    "make_optimizer",
    "scale_by_gi_adam",
    "schedule_value",
    "set_hyperparams",
]


class Schedule(NamedTuple):
    """A learning-rate schedule as five numbers (see the module docstring for the formula)."""

    eta_init: float
    eta_peak: float
    warmup_steps: float = 0.0
    decay_steps: float = 0.0
    eta_final: float = 0.0

    def __call__(self, count):
        """Return eta at update ``count`` (host or traced)."""
        return schedule_value(self.as_hyperparams(), count)

    def as_hyperparams(self) -> dict[str, float]:
        """Return the schedule as the injected hyperparameters of :func:`make_optimizer`."""
        return {
            "eta_init": float(self.eta_init),
            "learning_rate": float(self.eta_peak),
            "warmup_steps": float(self.warmup_steps),
            "decay_steps": float(self.decay_steps),
            "eta_final": float(self.eta_final),
        }


def constant(eta: float) -> Schedule:
    """Return the constant schedule eta_t = eta."""
    return Schedule(eta, eta)


def linear_warmup(eta_init: float, eta_trgt: float, warmup_steps: int) -> Schedule:
    """Return eta_t = eta_init + (eta_trgt - eta_init) t / warmup_steps, then eta_trgt."""
    return Schedule(eta_init, eta_trgt, warmup_steps)


def cosine_decay(
    eta_peak: float,
    decay_steps: int,
    *,
    eta_final: float = 0.0,
    warmup_steps: int = 0,
    eta_init: float = 0.0,
) -> Schedule:
    """Return an optional linear warmup to eta_peak, then a cosine decay to eta_final."""
    return Schedule(
        eta_init if warmup_steps else eta_peak, eta_peak, warmup_steps, decay_steps, eta_final
    )


def schedule_value(hp, count):
    """Evaluate the schedule family at update ``count``.

    Args:
      hp: mapping with ``eta_init``, ``learning_rate``, ``warmup_steps``, ``decay_steps``,
        ``eta_final`` (scalars or arrays).
      count: number of updates applied so far.

    Returns:
      eta_t; exactly ``learning_rate`` after warmup when ``decay_steps == 0``.
    """
    peak, wrm, dec = hp["learning_rate"], hp["warmup_steps"], hp["decay_steps"]
    t = jnp.asarray(count, jnp.result_type(peak, float))
    warm = hp["eta_init"] + (peak - hp["eta_init"]) * t / jnp.where(wrm > 0, wrm, 1.0)
    frac = jnp.clip(t - wrm, 0.0, None) / jnp.where(dec > 0, dec, 1.0)
    cos = hp["eta_final"] + (peak - hp["eta_final"]) * 0.5 * (
        1 + jnp.cos(jnp.pi * jnp.minimum(frac, 1.0))
    )
    after = jnp.where(dec > 0, cos, peak)
    return jnp.where(t < wrm, warm, after)


class ScaleByGIAdamState(optax.ScaleByAdamState):
    """GI-Adam's state: an ``optax.ScaleByAdamState`` (Adam tools read it unchanged) whose type
    tells :func:`hessian_lab.adam_preconditioner` that a still-zero ``nu`` at count 0 will be
    replaced by ``g0^2`` in the first update."""

    __slots__ = ()


def scale_by_gi_adam(b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """Scale by Adam whose second moment starts at g0^2 (GI-Adam, arXiv 2406.09405).

    At the first update (``count == 0``), if ``nu`` is still all zero it is replaced by the square
    of the gradient passed in, so GI-Adam works in any loop. :func:`gi_adam_init` sets ``nu``
    explicitly instead (e.g. to a full-batch g0, or to read the preconditioner at step 0).
    The state is a :class:`ScaleByGIAdamState`, a subclass of ``optax.ScaleByAdamState``, so
    Adam tools read it unchanged and :func:`hessian_lab.adam_preconditioner` gives GI-Adam's
    preconditioner at step 0 too.
    """
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

    def init_fn(params):
        return ScaleByGIAdamState(*base.init(params))

    def update_fn(updates, state, params=None):
        nu = gi_adam_nu(state, updates)
        updates, new = base.update(updates, state._replace(nu=nu), params)
        return updates, ScaleByGIAdamState(*new)

    return optax.GradientTransformation(init_fn, update_fn)


def gi_adam_nu(state, grads):
    """The second moment GI-Adam's next update starts from: ``grads**2`` while ``nu`` is still
    all zero at count 0 (not yet initialised), else ``state.nu``."""
    leaves = jax.tree.leaves(state.nu)
    fresh = (state.count == 0) & jnp.all(jnp.stack([jnp.all(n == 0) for n in leaves]))
    return jax.tree.map(
        lambda n, g: jnp.where(fresh, jnp.square(g).astype(n.dtype), n), state.nu, grads
    )


def gi_adam_init(opt_state, grads0):
    """Return ``opt_state`` with every Adam second moment set to ``grads0**2``.

    Args:
      opt_state: a state of an Adam-family optimizer (any nesting of optax states).
      grads0: gradient at initialisation, with the params' structure.

    Raises:
      ValueError: the state holds no ``ScaleByAdamState``.
    """
    found = []

    def fix(s):
        if isinstance(s, optax.ScaleByAdamState):
            found.append(True)
            return s._replace(
                nu=jax.tree.map(lambda n, g: jnp.square(g).astype(n.dtype), s.nu, grads0)
            )
        return s

    is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)  # noqa: E731
    out = jax.tree.map(fix, opt_state, is_leaf=is_adam)
    if not found:
        raise ValueError("opt_state: holds no optax.ScaleByAdamState; GI-Adam needs an Adam state")
    return out


_SCHEDULE_KEYS = ("eta_init", "learning_rate", "warmup_steps", "decay_steps", "eta_final")
_DEFAULTS = {
    "gd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
    "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 1e-4},
    "rmsprop": {"decay": 0.9, "eps": 1e-8},
    "gi_adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8},
}
OPTIMIZERS = tuple(_DEFAULTS)
_UNIT = {"momentum", "b1", "b2", "decay"}  # must lie in [0, 1)


def _inner(name):
    def factory(eta_init, learning_rate, warmup_steps, decay_steps, eta_final, **hp):
        sched = {"eta_init": eta_init, "learning_rate": learning_rate}
        sched |= {"warmup_steps": warmup_steps, "decay_steps": decay_steps, "eta_final": eta_final}
        lr = lambda count: schedule_value(sched, count)  # noqa: E731
        if name == "gd":
            return optax.sgd(lr)
        if name in ("momentum", "nesterov"):
            return optax.sgd(lr, momentum=hp["momentum"], nesterov=name == "nesterov")
        if name == "adam":
            return optax.adam(lr, b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])
        if name == "adamw":
            return optax.adamw(lr, hp["b1"], hp["b2"], hp["eps"], weight_decay=hp["weight_decay"])
        if name == "rmsprop":
            return optax.rmsprop(lr, decay=hp["decay"], eps=hp["eps"])
        return optax.chain(
            scale_by_gi_adam(hp["b1"], hp["b2"], hp["eps"]), optax.scale_by_learning_rate(lr)
        )

    # inject_hyperparams binds arguments against the factory's signature: state it explicitly.
    keys = list(_SCHEDULE_KEYS) + list(_DEFAULTS[name])
    kw = inspect.Parameter.KEYWORD_ONLY
    factory.__signature__ = inspect.Signature([inspect.Parameter(k, kw) for k in keys])
    return factory


def _check_schedule(s: Schedule) -> None:
    for field in ("eta_init", "warmup_steps", "decay_steps", "eta_final"):
        v = float(getattr(s, field))
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"learning_rate: schedule {field}={v!r} must be finite and >= 0")
    if not (math.isfinite(float(s.eta_peak)) and float(s.eta_peak) > 0):
        raise ValueError(f"learning_rate: schedule peak {s.eta_peak!r} must be finite and > 0")


def make_optimizer(name: str, *, learning_rate: float | Schedule, **hyperparams):
    """Build an optax optimizer whose hyperparameters and schedule are injected arrays.

    Args:
      name: one of ``OPTIMIZERS``: "gd" (``optax.sgd``), "momentum" (heavy ball,
        ``optax.sgd(momentum=...)``), "nesterov", "adam", "adamw", "rmsprop", "gi_adam".
      learning_rate: a float > 0 (constant) or a :class:`Schedule`.
      **hyperparams: the optimizer's own hyperparameters (defaults in brackets):
        momentum/nesterov: momentum [0.9]; adam/gi_adam: b1 [0.9], b2 [0.999], eps [1e-8];
        adamw: also weight_decay [1e-4]; rmsprop: decay [0.9], eps [1e-8] (optax convention:
        eps inside the square root, no bias correction).

    Returns:
      ``optax.GradientTransformationExtraArgs`` whose state is an
      ``InjectStatefulHyperparamsState``; ``state.hyperparams`` holds the schedule keys
      ``eta_init, learning_rate, warmup_steps, decay_steps, eta_final`` and the hyperparameters.

    Raises:
      ValueError: unknown ``name`` or hyperparameter, ``learning_rate <= 0``, a beta/momentum/decay
        outside [0, 1), ``eps < 0`` or ``weight_decay < 0``.
    """
    if name not in _DEFAULTS:
        raise ValueError(f"name: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")
    unknown = set(hyperparams) - set(_DEFAULTS[name])
    if unknown:
        allowed = ", ".join(_DEFAULTS[name]) or "none"
        raise ValueError(
            f"{sorted(unknown)[0]}: not a hyperparameter of {name!r}; allowed: {allowed}"
        )
    if isinstance(learning_rate, Schedule):
        sched = learning_rate
    else:
        lr = float(learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"learning_rate: must be a finite float > 0 or a Schedule, got {learning_rate!r}"
            )
        sched = constant(lr)
    _check_schedule(sched)
    hp = _DEFAULTS[name] | {k: float(v) for k, v in hyperparams.items()}
    for k, v in hp.items():
        if k in _UNIT and not 0 <= v < 1:
            raise ValueError(f"{k}: must lie in [0, 1), got {v!r}")
        if k in ("eps", "weight_decay") and not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{k}: must be finite and >= 0, got {v!r}")
    return optax.inject_hyperparams(_inner(name))(**sched.as_hyperparams(), **hp)


def _inject_state(opt_state):
    if hasattr(opt_state, "hyperparams") and hasattr(opt_state, "count"):
        return opt_state
    if isinstance(opt_state, tuple):
        for s in opt_state:
            found = _inject_state(s)
            if found is not None:
                return found
    return None


def current_learning_rate(opt_state):
    """Return eta_t, the rate the next update applies, or NaN if the state holds none.

    Reads the first ``inject_hyperparams`` state found in ``opt_state`` (nested tuples allowed).
    """
    s = _inject_state(opt_state)
    if s is None:
        return jnp.asarray(jnp.nan)
    if all(k in s.hyperparams for k in _SCHEDULE_KEYS):
        return schedule_value(s.hyperparams, s.count)
    if "learning_rate" in s.hyperparams:
        return jnp.asarray(s.hyperparams["learning_rate"])
    return jnp.asarray(jnp.nan)


def set_hyperparams(opt_state, values):
    """Return ``opt_state`` with injected hyperparameters replaced (same dtype and shape).

    Args:
      opt_state: a state with ``hyperparams`` (from :func:`make_optimizer` or ``inject_hyperparams``).
      values: mapping name -> value (a scalar, or an array of the stored shape, e.g. (P,)).

    Raises:
      ValueError: no injected hyperparameters, or an unknown name.
    """
    if not values:
        return opt_state
    s = _inject_state(opt_state)
    if s is None or s is not opt_state:
        raise ValueError("opt_state: hyperparams= needs a top-level inject_hyperparams state")
    new = dict(s.hyperparams)
    for k, v in values.items():
        if k not in new:
            raise ValueError(f"hyperparams: unknown name {k!r}; allowed: {', '.join(new)}")
        old = jnp.asarray(new[k])
        new[k] = jnp.broadcast_to(jnp.asarray(v, dtype=old.dtype), old.shape)
    return s._replace(hyperparams=new)
