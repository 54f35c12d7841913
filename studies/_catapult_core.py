"""Learning-rate sweeps in units of the initial sharpness, shared by ``catapult`` and
``early_phase_diagram``.

A sweep trains a population over ``c`` values and seeds with ``eta = c / lambda0(seed)``, where
``lambda0(seed)`` is the sharpness (top Hessian eigenvalue of the full training loss) at that
seed's initialisation, measured on the data the run trains on. The whole population is one
compiled program (``hessian_lab.population.train_population``, vmapped): the per-member learning
rates are injected hyperparameters.

Classification (Kalra & Barkeshli 2023, arXiv 2302.12250; Lewkowycz et al. 2020, arXiv
2003.02218), per member over steps ``1..T``: loss catapult iff ``max_t L_t / L_0 > 1``; sharpness
catapult iff ``max_t lambda_t / lambda_0 > threshold``; barrier iff the loss on the segment
``theta_0 -> theta_T`` rises above ``L_0``. Critical values per seed: ``c_loss``, ``c_sharp``,
``c_barrier`` = the smallest grid ``c`` with the event; ``c_max`` = the largest grid ``c`` below
the first diverging one (NaN where no member of the grid shows the event / diverges).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import hessian_lab as hl
from hessian_lab import callbacks as cb
from hessian_lab import data as hd
from hessian_lab import losses, models
from hessian_lab.optim import make_optimizer
from hessian_lab.population import make_step, member_keys, train_population

__all__ = ["Problem", "critical_c", "lambda0", "line_barrier", "make_problem", "nanmean", "sweep"]


class Problem(NamedTuple):
    """A full-batch problem: ``init(key) -> params``, ``loss_fn(params, (x, y))``, ``data``."""

    init: Any
    apply: Any
    loss_fn: Any
    data: tuple
    description: str


def make_problem(arch: str, depth: int, width: int, n: int, param: str, activation: str,
                 normalization: str, dtype: str) -> Problem:  # fmt: skip
    """Build an MLP/CNN/UV problem.

    ``arch``: "uv" (one example ``x = 1``, ``y = 0``, ``f = v.u x / sqrt(width)``, depth
    ignored), "mlp" or "cnn" on the first ``n`` sklearn digits (inputs standardised per feature,
    one-hot targets, MSE with ``normalization``).
    """
    if arch == "uv":
        model = models.uv(1, width, param="ntp")
        x, y = jnp.ones((1, 1), dtype), jnp.zeros((1, 1), dtype)
        desc = f"uv width {width} (NTP), one example x = 1, y = 0, loss f^2/2"
    else:
        ds = hd.digits(n=n, flatten=arch == "mlp", standardize="feature", dtype=np.float64)
        if arch == "mlp":
            model = models.mlp(64, 10, depth=depth, width=width, activation=activation,
                               param=param)  # fmt: skip
        else:
            model = models.cnn((8, 8, 1), 10, depth=depth, width=width, activation=activation,
                               param=param)  # fmt: skip
        x, y = jnp.asarray(ds.x, dtype), jnp.asarray(ds.y, dtype)
        desc = f"digits (first {n}), {arch} {depth}x{width} {activation} ({param}), MSE {normalization}"
    loss_fn = losses.make_loss_fn(model.apply, "mse", normalization=normalization)
    return Problem(model.init, model.apply, loss_fn, (x, y), desc)


def _unit(key, params):
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    return hl.tree.normalize(jax.tree.unflatten(tdef, v))


def _lambda0_fn(loss_fn, num_iters):
    def one(params, data):
        n = jax.tree.leaves(data)[0].shape[0]
        mv = hl.full_data_hvp(loss_fn, params, data, chunk_size=n)
        v0 = _unit(jax.random.key(7), params)
        return hl.top_eigs(mv, v0, k=1, num_iters=num_iters).values[0]

    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def init_stack(problem: Problem, seeds) -> Any:
    """Initial params of every seed, stacked; exactly what ``train_population`` initialises."""
    members = [problem.init(member_keys(int(s))[0]) for s in seeds]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def lambda0(problem: Problem, seeds, *, num_iters: int = 30) -> np.ndarray:
    """Sharpness at initialisation of every seed (full-data Hessian, Lanczos), shape (S,)."""
    return np.asarray(_lambda0_fn(problem.loss_fn, num_iters)(init_stack(problem, seeds),
                                                                problem.data))  # fmt: skip


def line_barrier(loss_fn, num_points: int, every: int) -> cb.Callback:
    """Callback: ``line_ratio`` = max over s in (0, 1] of L(theta_0 + s (theta_t - theta_0)) / L_0.

    The state is theta_0 (the params the callback first sees); it runs every ``every`` steps, so
    with ``every = T`` step T carries the barrier of the segment theta_0 -> theta_T.
    """
    s = jnp.linspace(0.0, 1.0, num_points + 1)[1:]

    def update(theta0, info):
        d = info.data
        loss0 = loss_fn(theta0, d)

        def at(si):
            p = jax.tree.map(lambda a, b: a + si * (b - a), theta0, info.params)
            return loss_fn(p, d)

        line = jax.lax.map(at, s)
        return theta0, {"line_ratio": jnp.max(line) / loss0}

    return cb.Callback(lambda params: params, update, every)


class Sweep(NamedTuple):
    """A population over (c, seed), arrays shaped (C, S, ...)."""

    lambda0: np.ndarray  # (S,)
    eta: np.ndarray  # (C, S)
    loss: np.ndarray  # (C, S, T+1)
    sharpness: np.ndarray  # (C, S, T+1)
    line_ratio: np.ndarray  # (C, S) barrier ratio at step T (NaN if not measured)
    diverged: np.ndarray  # (C, S) bool
    diverged_step: np.ndarray  # (C, S)


def sweep(problem: Problem, cs, seeds, *, num_steps: int, sharpness_every: int = 1,
          lanczos_iters: int = 10, lambda0_iters: int = 30, divergence_loss: float = 1e6,
          barrier_points: int = 0, batch_size: int | None = None, optimizer=None) -> Sweep:  # fmt: skip
    """Train the population ``eta = c / lambda0(seed)`` for ``num_steps + 1`` loss evaluations.

    Metrics are recorded at steps ``0..num_steps`` (theta_0 .. theta_T); the last update is not
    used. One compile of the population step per call.
    """
    cs, seeds = np.asarray(cs, float), np.asarray(seeds, int)
    C, S = cs.size, seeds.size
    lam0 = lambda0(problem, seeds, num_iters=lambda0_iters)
    eta = cs[:, None] / lam0[None, :]
    T = num_steps
    callbacks = [cb.sharpness(problem.loss_fn, every=sharpness_every, num_iters=lanczos_iters)]
    if barrier_points > 0:
        callbacks.append(line_barrier(problem.loss_fn, barrier_points, T))
    optimizer = make_optimizer("gd", learning_rate=1.0) if optimizer is None else optimizer
    pstep = make_step(problem.loss_fn, optimizer, callbacks=callbacks, batch_size=batch_size,
                      chunk_size=T + 1)  # fmt: skip
    bad = ~np.isfinite(eta) | (eta <= 0)
    res = train_population(
        pstep, problem.init, problem.data,
        learning_rates=np.where(bad, 1.0, eta).ravel(), seeds=np.tile(seeds, C),
        num_steps=T + 1, divergence_threshold=divergence_loss,
    )  # fmt: skip
    m = {k: v.reshape(C, S, T + 1) for k, v in res.metrics.items()}
    line = m["line_ratio"][..., T] if barrier_points > 0 else np.full((C, S), np.nan)
    return Sweep(lam0, eta, m["loss"], m["sharpness"], line,
                 res.diverged.reshape(C, S), res.diverged_step.reshape(C, S))  # fmt: skip


def nanmean(a, axis=None):
    """Mean of the finite entries (NaN where there are none), without warnings."""
    a = np.asarray(a, float)
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    s = np.where(ok, a, 0.0).sum(axis=axis)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def max_ratio(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``max_{t >= 1} values_t / ref`` over the last axis, ignoring NaN (NaN if none)."""
    v = np.asarray(values, float)[..., 1:] / np.asarray(ref, float)[..., None]
    v = np.where(np.isfinite(v), v, -np.inf)
    out = v.max(axis=-1)
    return np.where(np.isfinite(out), out, np.nan)


def critical_c(cs: np.ndarray, event: np.ndarray, *, largest_before: bool = False) -> np.ndarray:
    """Per seed: the smallest c with ``event`` (C, S) True; NaN if none.

    ``largest_before``: instead the largest c below the first event (``c_max`` from the divergence
    mask), or the largest grid c if the event never occurs (NaN if it occurs at the first c).
    """
    cs, event = np.asarray(cs, float), np.asarray(event, bool)
    out = np.full(event.shape[1], np.nan)
    for s in range(event.shape[1]):
        hit = np.flatnonzero(event[:, s])
        if not largest_before:
            out[s] = cs[hit[0]] if hit.size else np.nan
        elif hit.size == 0:
            out[s] = cs[-1]
        elif hit[0] > 0:
            out[s] = cs[hit[0] - 1]
    return out
