"""The loss-catapult search for the critical learning rate (Kalra & Barkeshli 2024, arXiv 2406.09405).

Increase eta geometrically from a small value until the training loss rises above its initial value
within ``num_steps`` updates, then bisect (in log eta) between the last eta whose loss did not rise
and the first one whose loss did. No Hessian products are needed: only training steps.

Why it estimates 2/lambda0. Near initialisation take the loss quadratic,
``L(theta) = L* + 1/2 sum_i lambda_i e_i^2`` in the Hessian eigenbasis. GD gives
``e_i(t) = (1 - eta lambda_i)^t e_i(0)``, so

    L_t - L_0 = 1/2 sum_i lambda_i e_i(0)^2 [(1 - eta lambda_i)^(2t) - 1].

Every term is negative unless ``eta lambda_i > 2``. Just above ``eta = 2 / lambda_1`` only the top
direction grows, by ``(eta lambda_1 - 1)^(2t)``, while all the others shrink: after one step the
loss rises only once eta is well above 2/lambda_1 (a single-step test overestimates the critical
rate), while after t steps the growth factor wins for any ``eta lambda_1 - 1 > 1 + O(1/t)``, so the
estimate decreases towards 2/lambda_1 as the number of test steps grows.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from hessian_lab.optim import make_optimizer
from hessian_lab.trainer import train

__all__ = ["CatapultSearch", "catapult_search"]

_GD = None


def _default_optimizer():
    global _GD
    if _GD is None:  # one object, so every search with the same loss_fn reuses one compile
        _GD = make_optimizer("gd", learning_rate=1.0)
    return _GD


class CatapultSearch(NamedTuple):
    """Result of :func:`catapult_search`.

    Attributes:
      eta: the estimate of the critical rate: the smallest eta found whose loss rose within
        ``num_steps`` updates (upper end of the final bracket).
      eta_stable: the largest eta found whose loss did not rise (lower end of the bracket).
      num_trials: training runs spent (each at most ``max(num_steps + 1, chunk_size)`` steps).
      etas: every eta tried, in order. rose: whether each one's loss rose.
    """

    eta: float
    eta_stable: float
    num_trials: int
    etas: np.ndarray
    rose: np.ndarray


def catapult_search(
    loss_fn,
    params: Any,
    data: Any,
    /,
    *,
    num_steps: int = 10,
    eta_min: float = 1e-3,
    growth: float = 2.0,
    bisect_iters: int = 6,
    max_trials: int = 80,
    rtol: float = 1e-6,
    optimizer=None,
    chunk_size: int = 32,
) -> CatapultSearch:
    """Estimate the critical learning rate 2/lambda0 by looking for a loss catapult.

    A trial at rate eta trains a copy of ``params`` for ``num_steps`` full-batch updates (through
    :func:`hessian_lab.trainer.train`) and asks whether any of ``L_1..L_num_steps`` exceeds
    ``L_0 (1 + rtol)``; a non-finite loss or parameters count as a rise. The trainer stops the run
    at the first rise (its divergence threshold is set to ``L_0 (1 + rtol)``), so unstable trials
    are cheap. Starting at ``eta_min`` the rate is multiplied by ``growth`` until a trial rises
    (divided, if ``eta_min`` already rises), then ``bisect_iters`` log-bisections narrow the bracket
    to a factor ``growth ** (1 / 2**bisect_iters)``. Cost: about
    ``log(eta / eta_min) / log(growth) + bisect_iters`` trials, no Hessian products.

    Every trial runs ``max(num_steps + 1, chunk_size)`` steps in chunks of ``chunk_size`` and only
    rises at steps ``<= num_steps`` count, so all ``num_steps <= chunk_size - 1`` share one compiled
    program per ``(loss_fn, optimizer)``.

    Args:
      loss_fn: ``loss_fn(params, data) -> scalar`` mean training loss; pass the same object to
        repeated searches to reuse the compiled step.
      params: the initial parameters (pytree).
      data: the full training set (pytree of arrays with a leading example axis).
      num_steps: updates per trial (>= 1); more steps approach 2/lambda0 from above.
      eta_min: first rate tried (> 0). growth: geometric factor (> 1).
      bisect_iters: log-bisection steps after bracketing (>= 0).
      max_trials: give up (ValueError) if no bracket is found within this many trials.
      rtol: relative margin above ``L_0`` that counts as a rise (guards against rounding).
      optimizer: an optimizer from :func:`hessian_lab.optim.make_optimizer` whose injected
        ``learning_rate`` is set per trial (default: plain GD). Use the optimizer you will train
        with (e.g. momentum) to estimate that optimizer's critical rate; its warmup, if any, is
        kept, so pass one without warmup.
      chunk_size: steps per compiled chunk (see above).

    Returns:
      :class:`CatapultSearch`.

    Raises:
      ValueError: a bad option, a non-finite initial loss, or no bracket within ``max_trials``.

    Example:
      >>> res = catapult_search(loss_fn, params, (x, y), num_steps=10)  # doctest: +SKIP
      >>> eta_init = res.eta  # start a linear warmup here (arXiv 2406.09405, section 6)
    """
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps: must be an int >= 1, got {num_steps!r}")
    if not (math.isfinite(eta_min) and eta_min > 0):
        raise ValueError(f"eta_min: must be finite and > 0, got {eta_min!r}")
    if not (math.isfinite(growth) and growth > 1):
        raise ValueError(f"growth: must be finite and > 1, got {growth!r}")
    if not (isinstance(bisect_iters, int) and bisect_iters >= 0):
        raise ValueError(f"bisect_iters: must be an int >= 0, got {bisect_iters!r}")
    if not (isinstance(max_trials, int) and max_trials >= 1):
        raise ValueError(f"max_trials: must be an int >= 1, got {max_trials!r}")
    if not (math.isfinite(rtol) and rtol >= 0):
        raise ValueError(f"rtol: must be finite and >= 0, got {rtol!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    opt = _default_optimizer() if optimizer is None else optimizer
    loss0 = float(loss_fn(params, data))
    if not math.isfinite(loss0):
        raise ValueError(f"params: the initial loss is not finite ({loss0})")
    threshold = loss0 * (1 + rtol) if loss0 >= 0 else loss0 * (1 - rtol)
    steps = max(num_steps + 1, chunk_size)
    etas, rose = [], []

    def rises(eta: float) -> bool:
        if len(etas) >= max_trials:
            raise ValueError(
                f"max_trials: no loss rise bracketed within {max_trials} trials "
                f"(last eta {etas[-1]:.3g}); change eta_min or growth"
            )
        h = train(
            loss_fn,
            params,
            opt,
            data,
            num_steps=steps,
            hyperparams={"learning_rate": eta},
            divergence_threshold=threshold,
            chunk_size=chunk_size,
        ).history
        up = bool(h.diverged and h.stop_step <= num_steps)
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
    return CatapultSearch(hi, lo, len(etas), np.asarray(etas), np.asarray(rose))
