"""Estimate the critical learning rate 2/lambda0 from a loss catapult, without Hessian products.

Kalra & Barkeshli 2024 (arXiv 2406.09405, section 6) choose the initial learning rate of a warmup
this way: increase eta geometrically from a small value until the training loss rises above its
initial value within a few steps; that eta estimates the critical rate 2/lambda0. Only training
steps are needed (through :func:`hessian_lab.trainer.train` with a step the caller builds and
may reuse), so the search works on any model whose loss you can train.

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

from .trainer import Step, train

__all__ = ["CatapultSearchResult", "catapult_search"]


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
    step: Step,
    params: Any,
    data: Any,
    *,
    num_steps: int = 10,
    eta_min: float = 1e-3,
    growth: float = 2.0,
    bisect_iters: int = 6,
    max_trials: int = 80,
    rtol: float = 1e-6,
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

    Compiles once: every trial (and the measurement of L_0) runs one chunk of ``step`` (trials
    run ``step.chunk_size`` steps and stop at the first rise) with the rate injected, so repeated
    searches with the same ``step`` and data shapes reuse one program.

    Args:
      step: a full-batch :func:`hessian_lab.trainer.make_step` of the mean training loss and an
        optimizer from :func:`hessian_lab.optim.make_optimizer` whose injected
        ``learning_rate`` is set per trial: plain GD (``make_optimizer("gd",
        learning_rate=1.0)``), or the optimizer you will train with (e.g. momentum, without
        warmup) to estimate *its* critical rate. Its ``chunk_size`` (>= 2, e.g. 32) must exceed
        ``num_steps``. Reuse it across searches to reuse the compiled program.
      params: the initial parameters (pytree).
      data: the full training set (pytree of arrays with a common leading example axis).
      num_steps: updates per trial, an int in ``[1, step.chunk_size)``. More steps approach
        2/lambda0 from above (1 step overestimates it); 10-20 is usually within 10%.
      eta_min: first rate tried (finite, > 0).
      growth: geometric factor between rates while bracketing (finite, > 1).
      bisect_iters: log-bisection steps after bracketing (int >= 0).
      max_trials: raise if no bracket is found within this many trials (int >= 1).
      rtol: relative margin above ``L_0`` that counts as a rise (finite, >= 0; guards rounding).

    Returns:
      :class:`CatapultSearchResult`.

    Raises:
      ValueError: a bad option (naming it), a non-finite initial loss, or no bracket within
        ``max_trials`` trials.

    Example:
      >>> import jax, numpy as np
      >>> from hessian_lab import models, optim, trainer
      >>> from hessian_lab.losses import make_loss_fn
      >>> net = models.mlp(4, 1, depth=0, width=1, bias=False)
      >>> loss_fn = make_loss_fn(net.apply, "mse")
      >>> gd = optim.make_optimizer("gd", learning_rate=1.0)
      >>> step = trainer.make_step(loss_fn, gd, chunk_size=32)
      >>> x = np.random.default_rng(0).standard_normal((32, 4))
      >>> y = np.zeros((32, 1))
      >>> res = catapult_search(step, net.init(jax.random.key(0)), (x, y), num_steps=20)
      >>> bool(res.eta_stable < res.eta)  # eta ~ 2 / lambda_max(x.T @ x / 32)
      True
    """
    _check("step", isinstance(step, Step), "a trainer.Step from make_step", step)
    _check("step", step.batch_size is None, "full batch (batch_size=None)", step.batch_size)
    chunk_size = step.chunk_size
    _check("step.chunk_size", chunk_size >= 2, "an int >= 2", chunk_size)
    _check("num_steps", isinstance(num_steps, int) and not isinstance(num_steps, bool)
           and num_steps >= 1, "an int >= 1", num_steps)  # fmt: skip
    _check("num_steps", num_steps < chunk_size, f"< step.chunk_size = {chunk_size}", num_steps)
    _check("eta_min", math.isfinite(eta_min) and eta_min > 0, "finite and > 0", eta_min)
    _check("growth", math.isfinite(growth) and growth > 1, "finite and > 1", growth)
    _check("bisect_iters", isinstance(bisect_iters, int) and bisect_iters >= 0, "an int >= 0",
           bisect_iters)  # fmt: skip
    _check("max_trials", isinstance(max_trials, int) and max_trials >= 1, "an int >= 1",
           max_trials)  # fmt: skip
    _check("rtol", math.isfinite(rtol) and rtol >= 0, "finite and >= 0", rtol)

    def run(eta, **kw):  # one chunk per trial: a fixed program whatever num_steps is
        hp = {"learning_rate": eta}
        return train(step, params, data, num_steps=chunk_size, hyperparams=hp, **kw).history

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
