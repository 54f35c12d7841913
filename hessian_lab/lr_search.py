"""Estimate the critical learning rate 2/lambda0 from a loss catapult, without Hessian products.

Kalra & Barkeshli 2024 (arXiv 2406.09405, section 6) choose the initial learning rate of a warmup
this way: increase eta geometrically from a small value until the training loss rises above its
initial value within a few steps; that eta estimates the critical rate 2/lambda0. Only training
steps are needed (through :func:`hessian_lab.trainer.train`), so the search works on any model
whose loss you can train.

Why it estimates 2/lambda0. Near initialisation take the loss quadratic,
``L(theta) = L* + 1/2 sum_i lambda_i e_i^2`` in the Hessian eigenbasis. GD gives
``e_i(t) = (1 - eta lambda_i)^t e_i(0)``, so

    L_t - L_0 = 1/2 sum_i lambda_i e_i(0)^2 [(1 - eta lambda_i)^(2t) - 1].

Every term is negative unless ``eta lambda_i > 2``. Just above ``eta = 2 / lambda_1`` only the top
direction grows, by ``(eta lambda_1 - 1)^(2t)``, while the others shrink: after one step the loss
rises only once eta is well above 2/lambda_1 (a single-step test overestimates the critical rate),
while after k steps the growth wins for any ``eta lambda_1 - 1 > 1 + O(1/k)``, so the estimate
decreases towards 2/lambda_1 as k grows. For a network whose sharpness falls on its own at early
times (large initial outputs, e.g. standard parameterisation) the loss may not rise until eta is
several times 2/lambda0: the search then measures the loss-catapult threshold ``c_loss`` of
Kalra & Barkeshli 2023 (arXiv 2302.12250), which is the rate a warmup can safely start from.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .optim import make_optimizer
from .trainer import train

__all__ = ["CatapultSearchResult", "catapult_search"]

_GD: list = []


def _default_optimizer():
    if not _GD:  # one object, so every search with the same loss_fn reuses one compiled chunk
        _GD.append(make_optimizer("gd", learning_rate=1.0))
    return _GD[0]


class CatapultSearchResult(NamedTuple):
    """Result of :func:`catapult_search`.

    Attributes:
      eta: the estimate of the critical rate: the smallest eta found whose loss rose within
        ``num_steps`` updates (upper end of the final bracket).
      eta_stable: the largest eta found whose loss did not rise (lower end of the bracket).
      loss0: the initial training loss L_0.
      num_trials: training runs spent.
      num_updates: optimizer updates applied over all trials (the cost, in training steps).
      etas: every eta tried, in order (1-D array).
      rose: whether each trial's loss rose (1-D bool array).
    """

    eta: float
    eta_stable: float
    loss0: float
    num_trials: int
    num_updates: int
    etas: np.ndarray
    rose: np.ndarray


def _check(name, ok, allowed, value):
    if not ok:
        raise ValueError(f"{name}: must be {allowed}, got {value!r}")


def catapult_search(
    loss_fn,
    params: Any,
    data: Any,
    *,
    num_steps: int = 10,
    eta_min: float = 1e-3,
    growth: float = 2.0,
    bisect_iters: int = 6,
    max_trials: int = 80,
    rtol: float = 1e-6,
    optimizer=None,
    chunk_size: int = 32,
) -> CatapultSearchResult:
    """Estimate the critical learning rate 2/lambda0 by looking for a loss catapult.

    A trial at rate eta trains ``params`` for ``num_steps`` full-batch updates and asks whether any
    of ``L_1 .. L_num_steps`` exceeds ``L_0 (1 + rtol)``; a non-finite loss or non-finite
    parameters count as a rise. The trainer's divergence threshold is set to ``L_0 (1 + rtol)``,
    so a trial stops at its first rise. Starting at ``eta_min`` the rate is multiplied by
    ``growth`` until a trial rises (divided, if ``eta_min`` already rises); then ``bisect_iters``
    bisections in log eta narrow the bracket ``[eta_stable, eta]`` to a factor
    ``growth ** (2 ** -bisect_iters)``. Cost: about ``log(eta / eta_min) / log(growth) +
    bisect_iters`` trials of at most ``num_steps`` updates each; no Hessian products.

    Compiles once: every trial (and the measurement of L_0) runs the same jitted chunk of
    :func:`hessian_lab.trainer.train` with the rate injected, and ``num_steps < chunk_size`` keeps
    the chunk length fixed, so repeated searches with the same ``loss_fn``, ``optimizer``,
    ``chunk_size`` and data shapes reuse one program.

    Args:
      loss_fn: ``loss_fn(params, data) -> scalar`` mean training loss. Pass the same object to
        repeated searches to reuse the compiled program.
      params: the initial parameters (pytree).
      data: the full training set (pytree of arrays with a common leading example axis).
      num_steps: updates per trial, an int in ``[1, chunk_size)``. More steps approach 2/lambda0
        from above (1 step overestimates it); 10-20 is usually within 10%.
      eta_min: first rate tried (finite, > 0).
      growth: geometric factor between rates while bracketing (finite, > 1).
      bisect_iters: log-bisection steps after bracketing (int >= 0).
      max_trials: raise if no bracket is found within this many trials (int >= 1).
      rtol: relative margin above ``L_0`` that counts as a rise (finite, >= 0; guards rounding).
      optimizer: a transformation from :func:`hessian_lab.optim.make_optimizer` whose injected
        ``learning_rate`` is set per trial (default: plain GD). Pass the optimizer you will train
        with (e.g. momentum) to estimate *its* critical rate; pass one without warmup.
      chunk_size: steps per compiled chunk (int >= 2).

    Returns:
      :class:`CatapultSearchResult`.

    Raises:
      ValueError: a bad option (naming it), a non-finite initial loss, or no bracket within
        ``max_trials`` trials.

    Example:
      >>> import jax, numpy as np
      >>> from hessian_lab import models
      >>> from hessian_lab.losses import make_loss_fn
      >>> net = models.mlp(4, 1, depth=0, width=1, bias=False)
      >>> loss_fn = make_loss_fn(net.apply, "mse")
      >>> x = np.random.default_rng(0).standard_normal((32, 4))
      >>> y = np.zeros((32, 1))
      >>> res = catapult_search(loss_fn, net.init(jax.random.key(0)), (x, y), num_steps=20)
      >>> bool(res.eta_stable < res.eta)  # eta ~ 2 / lambda_max(x.T @ x / 32)
      True
    """
    _check("num_steps", isinstance(num_steps, int) and not isinstance(num_steps, bool)
           and num_steps >= 1, "an int >= 1", num_steps)  # fmt: skip
    _check("chunk_size", isinstance(chunk_size, int) and chunk_size >= 2, "an int >= 2", chunk_size)
    _check("num_steps", num_steps < chunk_size, f"< chunk_size = {chunk_size}", num_steps)
    _check("eta_min", math.isfinite(eta_min) and eta_min > 0, "finite and > 0", eta_min)
    _check("growth", math.isfinite(growth) and growth > 1, "finite and > 1", growth)
    _check("bisect_iters", isinstance(bisect_iters, int) and bisect_iters >= 0, "an int >= 0",
           bisect_iters)  # fmt: skip
    _check("max_trials", isinstance(max_trials, int) and max_trials >= 1, "an int >= 1",
           max_trials)  # fmt: skip
    _check("rtol", math.isfinite(rtol) and rtol >= 0, "finite and >= 0", rtol)
    opt = _default_optimizer() if optimizer is None else optimizer
    steps = chunk_size  # one chunk per trial: a fixed program whatever num_steps is

    def run(eta, **kw):
        return train(loss_fn, params, opt, data, num_steps=steps, chunk_size=chunk_size,
                     hyperparams={"learning_rate": eta}, **kw).history  # fmt: skip

    # L_0 from the trials' own program (loss_goal=inf stops it at step 0, before any update).
    loss0 = float(run(eta_min, loss_goal=np.inf)["loss"][0])
    if not math.isfinite(loss0):
        raise ValueError(f"params: the initial loss is not finite ({loss0})")
    threshold = loss0 + rtol * abs(loss0)
    etas, rose, updates = [], [], [0]

    def rises(eta: float) -> bool:
        if len(etas) >= max_trials:
            raise ValueError(
                f"max_trials: no loss rise bracketed within {max_trials} trials "
                f"(last eta {etas[-1]:.3g}); change eta_min or growth"
            )
        h = run(eta, divergence_threshold=threshold)
        up = bool(h.diverged and h.stop_step <= num_steps)
        updates[0] += min(h.num_updates, num_steps)
        etas.append(eta)
        rose.append(up)
        return up

    eta = float(eta_min)
    if rises(eta):
        hi = eta
        while rises(eta := eta / growth):
            hi = eta
        lo = eta
    else:
        lo = eta
        while not rises(eta := eta * growth):
            lo = eta
        hi = eta
    for _ in range(bisect_iters):
        mid = math.sqrt(lo * hi)
        if rises(mid):
            hi = mid
        else:
            lo = mid
    return CatapultSearchResult(
        hi, lo, loss0, len(etas), updates[0], np.asarray(etas), np.asarray(rose, bool)
    )
