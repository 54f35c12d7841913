"""The batch-size study's numerics: mini-batch Hessian spectra, predictions, thresholds, fits.

Split from :mod:`hessian_lab.studies.batch_size` to keep both under 400 lines: this module holds
one sweep point (one batch size ``B``: the spectra of ``H_B`` over many batches at every seed's
initialisation, the predicted maximal learning rates, and the SGD and Adam populations over a
learning-rate grid) and the statistics (the spiked-model fit, log-log slopes with t-intervals
over seeds). The study module holds the contract (Config, summary, verdict). Functions here take
any object with the study Config's fields.

Sampling: a batch is a uniform ``B``-subset of the ``n`` training examples (no replacement), the
marginal law of the trainer's epoch-shuffled batches, so ``E[H_B] = H`` and the batch-noise
factor is ``c_B = (n - B) / (B (n - 1))`` (``~ 1/B - 1/n``, 0 at ``B = n``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import hessian_lab as hl
from hessian_lab import callbacks, population
from hessian_lab import tree as tu
from hessian_lab.optim import make_optimizer

from . import kit, problems
from . import stats as st
from .stochastic_eos_core import batch_noise as batch_noise  # c_B, shared with stochastic_eos

__all__ = ["OPTIMIZERS", "adam_threshold", "batch_noise", "loglog_slopes", "spectra_fn"]
__all__ += ["batch_weights", "lr_grid", "make_problem", "point_steps", "shared", "weighted_loss"]
__all__ += ["run_point", "sample_batches", "second_moment"]
__all__ += ["crossover", "spike_fit", "t_interval"]

t_interval = st.t_interval  # the shared statistics helper, re-exported for this study

OPTIMIZERS = ("sgd", "adam")


def adam_threshold(b1: float) -> float:
    """Adam's critical ``eta * lambda(P^-1 H)`` with a frozen preconditioner: ``(2 + 2 b1) /
    (1 - b1)`` (38 at ``b1 = 0.9``; derivation in ``hessian_lab._precond``)."""
    return (2.0 + 2.0 * b1) / (1.0 - b1)


def make_problem(c) -> problems.Problem:
    """The digits MLP (or CNN) of the Config, standardised inputs, per-example MSE."""
    return problems.catapult_problem(
        c.arch, width=c.width, depth=c.depth, n=c.n_train, param="sp", activation=c.activation
    )


def sample_batches(n: int, batch_size: int, num_batches: int, seed: int) -> np.ndarray:
    """``(num_batches, B)`` indices, each row a uniform ``B``-subset of ``range(n)`` (at
    ``B = n`` every row is the whole set)."""
    rng = np.random.default_rng([seed, batch_size])
    return np.stack([np.sort(rng.choice(n, batch_size, replace=False)) for _ in range(num_batches)])


def batch_weights(n: int, batch_size: int, num_batches: int, seed: int) -> np.ndarray:
    """``(num_batches, n)`` weights ``1/B`` on the examples of each :func:`sample_batches` row,
    0 elsewhere: ``sum_i w_i l_i`` is the batch's mean loss, in a shape every ``B`` shares."""
    idx = sample_batches(n, batch_size, num_batches, seed)
    w = np.zeros((num_batches, n), np.dtype(jnp.result_type(float)))
    np.put_along_axis(w, idx, 1.0 / batch_size, axis=1)
    return w


def weighted_loss(loss_fn):
    """``f(params, (x, y, w)) = sum_i w_i l_i(params)``, ``l_i = loss_fn`` on example ``i`` alone.

    For a mean loss and ``w`` from :func:`batch_weights` this is the batch's loss, so its
    Hessian is ``H_B``, at ``n`` examples' cost per product whatever ``B``: one compiled program
    serves every batch size.
    """

    def f(params, batch):
        x, y, w = batch
        per = jax.vmap(lambda a, b: loss_fn(params, (a[None], b[None])))(x, y)
        return jnp.sum(w.astype(per.dtype) * per)

    return f


def second_moment(loss_fn, params, data, noise):
    """``E[g_B^2]`` per coordinate over uniform ``B``-subsets: ``g^2 + c_B var_i(g_i)``.

    ``noise`` is ``c_B`` (:func:`batch_noise`; an array under ``jit``), ``g_i`` the per-example
    gradients (``loss_fn`` on one example), ``g`` their mean (the full gradient) and ``var_i``
    their population variance; exact for a mean loss. This is the second moment Adam's ``v``
    averages early in training, while theta has barely moved. Memory: ``n x D``.
    """
    x, y = data
    per = jax.vmap(lambda a, b: jax.grad(loss_fn)(params, (a[None], b[None])))(x, y)
    cb = noise

    def moment(gi):
        g = jnp.mean(gi, axis=0)
        return g**2 + cb * jnp.mean((gi - g[None]) ** 2, axis=0)

    return jax.tree.map(moment, per)


def spectra_fn(loss_fn, c):
    """A jitted ``f(params, data, weights, noise, key) -> (lmax, lmin, lpre, grid, density)``.

    Per batch ``k`` (a row of ``weights``, :func:`batch_weights`; ``noise`` its ``c_B``):
    ``lambda_max`` (:func:`hessian_lab.top_eigs`) and ``lambda_min``, the smallest algebraic
    eigenvalue (:func:`hessian_lab.bottom_eigs`), of ``H_B``, and the top eigenvalue of
    ``P^-1/2 H_B P^-1/2`` with Adam's ``P = sqrt(E[g_B^2]) + eps`` (:func:`second_moment`,
    :func:`hessian_lab.preconditioned_sharpness`), ``c.lanczos_iters`` steps each; batches in
    sequence (``lax.map``). Then the SLQ density of the first batch's ``H_B`` (``c.slq_probes``
    probes of ``c.slq_iters`` steps). Cost per batch: ``3 (lanczos_iters + 1)`` products of
    ``n`` examples each. One program for every batch size and seed: the caller holds it.
    """
    m = c.lanczos_iters
    batch_loss = weighted_loss(loss_fn)

    def one(params, batch, precond, key):
        hvp = hl.hvp(batch_loss, params, batch)
        v0 = tu.random_like(key, params)
        top = hl.top_eigs(hvp, v0, k=1, num_iters=m).values[0]
        bottom = hl.bottom_eigs(hvp, v0, k=1, num_iters=m).values[0]
        pre = hl.preconditioned_sharpness(hvp, precond, v0, k=1, num_iters=m).values[0]
        return top, bottom, pre

    def f(params, data, batches, noise, key):
        moment = second_moment(loss_fn, params, data, noise)
        precond = jax.tree.map(lambda v: jnp.sqrt(v) + c.adam_eps, moment)
        k_lanczos, k_slq = jax.random.split(key)
        keys = jax.random.split(k_lanczos, jax.tree.leaves(batches)[0].shape[0])
        top, bottom, pre = jax.lax.map(
            lambda a: one(params, (*data, a[0]), precond, a[1]), (batches, keys)
        )
        dens = hl.spectral_density(
            hl.hvp(batch_loss, params, (*data, batches[0])),
            k_slq,
            params,
            num_iters=c.slq_iters,
            num_probes=c.slq_probes,
            num_points=c.density_points,
        )
        return top, bottom, pre, dens.grid, dens.density

    return jax.jit(f)


def lr_grid(c, optimizer: str) -> np.ndarray:
    """The rates tried for ``optimizer``: a log2 grid, ``grid_per_octave`` per factor 2, from
    the lowest of its range up to the highest (included, within rounding)."""
    lo, hi = getattr(c, f"{optimizer}_lr_range")
    k = np.arange(int(np.floor(np.log2(hi / lo) * c.grid_per_octave + 1e-9)) + 1)
    return lo * 2.0 ** (k / c.grid_per_octave)


def point_steps(c) -> int:
    """Member-steps of one point: both optimizers, their grids times the seeds."""
    return sum(lr_grid(c, o).size for o in OPTIMIZERS) * c.seeds * c.num_steps


def _thresholds(c, prob, opt_name, batch_size, grid, progress):
    """One population (grid x seeds) of ``opt_name`` at ``batch_size``: unstable (G, S) and the
    smallest unstable grid rate per seed (NaN: none; NaN too if the lowest rate is unstable)."""
    n, seeds = c.n_train, np.arange(c.seeds)
    hp = {"b1": c.adam_b1} if opt_name == "adam" else {}
    opt = make_optimizer("gd" if opt_name == "sgd" else "adam", learning_rate=1.0, **hp)
    pstep = population.make_step(
        prob.loss_fn,
        opt,
        mode=c.mode,
        batch_size=None if batch_size == n else batch_size,
        callbacks=[callbacks.full_loss(prob.loss_fn, every=1)],
        chunk_size=c.num_steps,
    )
    res = population.train_population(
        pstep,
        prob.model.init,
        prob.data,
        learning_rates=np.repeat(grid, seeds.size),
        seeds=np.tile(seeds, grid.size),
        num_steps=c.num_steps,
        divergence_threshold=c.divergence_cap,
        progress=progress,
    )
    full = res.metrics["full_loss"]  # (G*S, T), NaN after a stop
    rise = np.nanmax(full, axis=1) / full[:, 0]
    unstable = (res.diverged | ~(rise <= c.blowup)).reshape(grid.size, seeds.size)
    eta = st.critical_c(grid, unstable)
    eta = np.where(unstable[0], np.nan, eta)  # below the grid: not measured
    return unstable, eta


def shared(c) -> tuple[problems.Problem, Any]:
    """The problem and its compiled spectra program, built once and reused by every point."""
    prob = make_problem(c)
    return prob, spectra_fn(prob.loss_fn, c)


def run_point(c, batch_size: int, *, progress=None, held=None) -> dict[str, np.ndarray]:
    """Spectra of ``H_B`` at every seed's init, the predicted and the measured thresholds.

    ``held``: :func:`shared`'s problem and program (built here when None).
    """
    prob, spectra = shared(c) if held is None else held
    n, S = c.n_train, c.seeds
    weights = batch_weights(n, batch_size, c.num_batches, c.seed)
    weights = np.concatenate([weights, np.full((1, n), 1.0 / n, weights.dtype)])  # + H itself
    noise = np.asarray(batch_noise(batch_size, n), weights.dtype)
    K = c.num_batches
    lmax, lmin, lpre = (np.zeros((S, K)) for _ in range(3))
    full_max, full_min = np.zeros(S), np.zeros(S)
    for s in range(S):
        params = prob.model.init(population.member_keys(s)[0])  # the init train_population uses
        key = jax.random.fold_in(jax.random.key(c.seed), s)
        top, bottom, pre, grid, density = (
            np.asarray(v, float) for v in spectra(params, prob.data, weights, noise, key)
        )
        lmax[s], lmin[s], lpre[s] = top[:K], bottom[:K], pre[:K]
        full_max[s], full_min[s] = top[K], bottom[K]
        if s == 0:  # the density of seed 0's first batch
            dens_grid, dens = grid, density
    pred_sgd = 2.0 / lmax.mean(axis=1)
    pred_adam = adam_threshold(c.adam_b1) / lpre.mean(axis=1)
    out = {
        "lmax": lmax,
        "lmin": lmin,
        "lmax_full": full_max,
        "lmin_full": full_min,
        "lpre": lpre,
        "pred_sgd": pred_sgd,
        "pred_adam": pred_adam,
        "density_grid": dens_grid,
        "density": dens,
    }
    counter = kit.StepCounter(point_steps(c), progress)
    for name in OPTIMIZERS:
        grid = lr_grid(c, name)
        size = grid.size * c.seeds * c.num_steps
        unstable, eta = _thresholds(c, prob, name, batch_size, grid, counter.part(size))
        out |= {f"grid_{name}": grid, f"unstable_{name}": unstable, f"eta_{name}": eta}
    counter.finish()
    return out


def loglog_slopes(batch_sizes, eta, max_batch: int) -> np.ndarray:
    """Per seed, the least-squares slope of ``log eta`` against ``log B`` over ``B <= max_batch``.

    ``eta``: (S, nB). A seed needs two finite points in the range, else NaN.
    """
    b = np.asarray(batch_sizes, float)
    keep = b <= max_batch
    out = []
    for row in np.asarray(eta, float):
        ok = keep & np.isfinite(row) & (row > 0)
        if ok.sum() < 2:
            out.append(math.nan)
            continue
        out.append(float(np.polyfit(np.log(b[ok]), np.log(row[ok]), 1)[0]))
    return np.asarray(out)


def crossover(fit: dict, n: int) -> float:
    """The batch size where the spiked fit's noise term equals its spike: ``c_B = spike /
    noise``, ``B = n / (1 + (n - 1) spike / noise)``; below it the noise dominates and the
    paper's linear (SGD) and square-root (Adam) laws apply. NaN for a fit without both terms."""
    if not (fit["spike"] > 0 and fit["noise"] > 0):
        return math.nan
    return n / (1.0 + (n - 1) * fit["spike"] / fit["noise"])


def spike_fit(batch_sizes, values, n: int) -> dict[str, float]:
    """Fit ``values(B) = spike + noise * c_B`` (the spiked model, ``c_B = (n-B)/(B(n-1))``).

    Granziol et al.: an outlier ``beta`` of ``H`` moves to ``beta + (P sigma^2 / beta) c_B`` in
    ``H_B`` (noise of variance ``sigma^2 c_B`` per element, ``P`` parameters). Least squares on
    the mean over seeds and batches; returns ``spike``, ``noise`` (``P sigma^2 / beta``),
    ``sigma_sqrt_p = sqrt(noise * |spike|)`` and ``r2``.
    """
    b = np.asarray(batch_sizes, float)
    v = np.asarray(values, float)
    cb = np.asarray([batch_noise(int(x), n) for x in b])
    A = np.stack([np.ones_like(cb), cb], axis=1)
    (spike, noise), *_ = np.linalg.lstsq(A, v, rcond=None)
    resid = v - A @ np.asarray([spike, noise])
    tot = float(np.sum((v - v.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / tot if tot > 0 else math.nan
    return {
        "spike": float(spike),
        "noise": float(noise),
        "sigma_sqrt_p": float(math.sqrt(max(noise * abs(spike), 0.0))),
        "r2": r2,
    }
