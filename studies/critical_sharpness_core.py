"""The critical-sharpness study's training: its problem, one optimizer's runs, the edge.

Split from :mod:`hessian_lab.studies.critical_sharpness` to keep both under 400 lines. Functions
take any object with the study Config's fields.
"""

from __future__ import annotations

import numpy as np

from hessian_lab import callbacks, optim, population
from hessian_lab.problem import Problem

from . import problems
from . import problems_user as pu

__all__ = ["EDGE_REACH", "edge_start", "problem", "spearman", "train_group"]

EDGE_REACH = 0.95  # lambda_max >= 0.95 x threshold counts as reaching it (Cohen et al.'s band)


def problem(config) -> Problem:
    """The training problem: the user's ``problem`` (its model may hold state, BatchNorm
    statistics, which the runs carry), or the built-in MLP (MSE) on ``data``."""
    if config.problem:
        return pu.user_problem_of(config, config.n_train, stateful=True)
    return problems.make_problem(
        n_train=config.n_train,
        depth=config.depth,
        width=config.width,
        activation=config.activation,
        param="sp",
        normalization="per_example",
        data=config.data,
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the finite pairs (NaN with fewer than 3, or a constant)."""
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return float("nan")
    ra, rb = (np.argsort(np.argsort(v[keep])).astype(float) for v in (a, b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def edge_start(sharp, loss, steps, threshold) -> int:
    """Index of the first measurement at the edge of stability, or -1.

    The sharpness first reaches ``EDGE_REACH`` of ``threshold`` at ``reach`` (Cohen et al.'s
    runs hover in [0.95, 1.1] of it; ReLU nets sit just below). If the loss then rises from one
    step to the next, the edge starts after the first such rise: the oscillation along the top
    eigenvector has to grow out of rounding first (in float64 ~150 steps on digits, while the
    sharpness overshoots), and until then the gradient is not yet aligned. A run that hovers
    without the loss ever rising is at the edge from ``reach``.
    """
    hit = np.flatnonzero(sharp >= EDGE_REACH * threshold)
    if not hit.size:
        return -1
    rises = np.flatnonzero(np.diff(loss) > 0)
    rises = rises[rises >= steps[hit[0]]]
    if not rises.size:
        return int(hit[0])
    after = np.flatnonzero(steps > rises[0])
    return int(after[0]) if after.size else -1


def train_group(prob, config, opt_name, lrs, beta, progress):
    """Train one optimizer's runs (one per learning rate) with lambda_max, lambda_c, alignment."""
    opt = optim.make_optimizer(opt_name, learning_rate=1.0)
    cbs = [
        callbacks.sharpness(prob.loss_fn, every=config.every, num_iters=config.lanczos_iters),
        callbacks.critical_sharpness(
            prob.loss_fn, "batch", optimizer=opt, every=config.every, max_evals=config.max_evals
        ),
    ]
    if config.alignment_k:
        k, iters = config.alignment_k, config.alignment_iters
        every = config.alignment_every
        cbs.append(callbacks.alignment(prob.loss_fn, every=every, k=k, num_iters=iters))
    pstep = population.make_step(prob.loss_fn, opt, mode="loop", callbacks=cbs, chunk_size=200)
    lrs = np.asarray(lrs, float)
    return population.train_population(
        pstep,
        prob.model.init,
        prob.data,
        learning_rates=lrs,
        seeds=np.full(lrs.shape, config.seed, dtype=int),
        num_steps=config.num_steps,
        hyperparams=None if opt_name == "gd" else {"momentum": np.full(lrs.shape, beta)},
        divergence_threshold=config.divergence_threshold,
        progress=progress,
        state=prob.state,
    )
