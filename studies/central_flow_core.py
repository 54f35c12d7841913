"""The engine of the central-flow study: one GD run and its central flow, and their comparison.

:func:`run_lr` trains full-batch GD at one learning rate (``problems.SharpnessRunner``, the
sharpness by Lanczos at every step) and integrates the central flow of GD
(``hessian_lab.gd_central_flow``) from the same initialisation, up to the same time in steps.
:func:`compare` smooths GD's curves over a window of steps (GD oscillates with period two at the
edge; the flow predicts the time average) and measures the flow against them over the
edge-of-stability phase. Everything runs in float64 (the caller enters ``jax.enable_x64``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from hessian_lab import gd_central_flow, population

from . import problems

__all__ = ["compare", "edge_start", "flow_steps", "run_lr", "settle_start", "smooth"]

FLOW_CHUNK = 100  # flow steps per compiled scan


def flow_steps(config: Any) -> int:
    """Euler steps of the flow that cover ``num_steps`` GD steps."""
    return math.ceil(config.num_steps / config.flow_dt)


def _problem(config: Any) -> problems.Problem:
    c = config
    return problems.make_problem(
        n_train=c.n_train, depth=c.depth, width=c.width, activation=c.activation
    )


def _gd(config: Any, prob, lr: float, progress) -> dict[str, np.ndarray]:
    runner = problems.SharpnessRunner(
        prob, "gd", every=1, num_iters=config.lanczos_iters, chunk_size=FLOW_CHUNK
    )
    runs = runner.train(
        [lr],
        num_steps=config.num_steps,
        seed=config.seed,
        divergence_threshold=config.divergence_threshold,
        progress=progress,
    )
    return {
        "gd_loss": runs.loss[0],
        "gd_sharpness": runs.sharpness[0],
        "gd_diverged": np.asarray(runs.diverged[0]),
    }


def _flow(config: Any, prob, lr: float, progress) -> dict[str, np.ndarray]:
    c = config
    flow = gd_central_flow(
        prob.loss_fn, dt=c.flow_dt, k=c.k, num_iters=c.lanczos_iters, sdcp_iters=c.sdcp_iters
    )
    n = flow_steps(c)
    length = min(FLOW_CHUNK, n)

    @jax.jit
    def chunk(state, data, lr):
        return jax.lax.scan(lambda s, _: flow.step(s, data, lr), state, None, length=length)

    # the initialisation GD's population used (member 0 of seed ``config.seed``)
    params = prob.model.init(population.member_keys(c.seed)[0])
    state = flow.init(params, jax.random.key(c.seed))
    infos, done = [], 0
    while done < n:
        state, info = chunk(state, prob.data, lr)
        infos.append(jax.device_get(info))
        done += length
        if progress is not None:
            progress(min(done, n), n)
        if not np.isfinite(infos[-1].loss[-1]):
            break
    info = {k: np.concatenate([getattr(i, k) for i in infos])[:n] for k in infos[0]._fields}
    pad = n - info["loss"].shape[0]
    if pad:  # a flow that went non-finite: NaN to the end
        info = {
            k: np.concatenate([v, np.full((pad, *v.shape[1:]), np.nan)]) for k, v in info.items()
        }
    return {
        "flow_loss": info["loss"],
        "flow_predicted_loss": info["predicted_loss"],
        "flow_eigenvalues": info["eigenvalues"],
        "flow_sigma2": np.trace(info["X"], axis1=1, axis2=2),
        "flow_speed": info["speed"],
        "flow_grad_norm": info["grad_norm"],
    }


def run_lr(config: Any, lr: float, *, gd_progress=None, flow_progress=None) -> dict:
    """GD at ``lr`` and its central flow, from the same initialisation (float64 expected)."""
    prob = _problem(config)
    return _gd(config, prob, lr, gd_progress) | _flow(config, prob, lr, flow_progress)


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` steps; NaN where the window leaves the run.

    An even window holds as many even as odd steps, so GD's period-two oscillation averages out.
    """
    v = np.asarray(values, float)
    out = np.full(v.shape, np.nan)
    if v.size < window:
        return out
    avg = np.convolve(v, np.ones(window) / window, mode="valid")
    lo = window // 2
    out[lo : lo + avg.size] = avg
    return out


def edge_start(sharpness: np.ndarray, lr: float) -> int:
    """First GD step at which ``lambda_max`` reaches ``2/lr`` from below (-1: never).

    The EoS phase runs from there. A run that starts above ``2/lr`` (and whose sharpness first
    drops, the initial catapult) reaches it when it climbs back; one that never drops below is
    at the edge from step 0.
    """
    above = np.asarray(sharpness) >= 2.0 / lr
    if not above.any():
        return -1
    below = np.flatnonzero(~above)
    if not below.size:
        return 0
    later = np.flatnonzero(above[below[0] :])
    return int(below[0] + later[0]) if later.size else -1


def settle_start(loss: np.ndarray, reach: int, settle: int) -> int:
    """``settle`` steps after GD's first loss rise from ``reach`` on (-1: none): the onset over.

    On reaching ``2/eta`` GD is not oscillating yet: the oscillation grows out of rounding
    (about 150 steps in float64 here) while the sharpness keeps rising, then a catapult brings
    it back. The flow assumes the oscillation is there; this marks where GD has caught up.
    """
    if reach < 0:
        return -1
    rises = np.flatnonzero(np.diff(np.asarray(loss)) > 0)
    rises = rises[rises >= reach]
    if not rises.size or rises[0] + settle >= len(loss):
        return -1
    return int(rises[0] + settle)


def _rel(a: np.ndarray, b: np.ndarray, start: int) -> tuple[float, float]:
    """Mean and 90th percentile of ``|a - b| / |b|`` from ``start`` on (finite entries only)."""
    if start < 0:
        return float("nan"), float("nan")
    e = np.abs(a[start:] - b[start:]) / np.abs(b[start:])
    e = e[np.isfinite(e)]
    return (float(e.mean()), float(np.percentile(e, 90))) if e.size else (np.nan, np.nan)


def compare(out: dict, config: Any, lr: float) -> dict[str, np.ndarray]:
    """GD's smoothed curves, the flow at GD's steps, and the errors over the EoS phase."""
    T, dt = config.num_steps, config.flow_dt
    steps = np.arange(T)
    flow_t = np.arange(out["flow_loss"].shape[0]) * dt
    at = lambda a: np.interp(steps, flow_t, a, right=np.nan)  # noqa: E731
    f_sharp = at(out["flow_eigenvalues"][:, 0])
    # X, hence the predicted loss, chatters from one Euler step to the next (white noise of a
    # few tens of %: each step corrects the previous one's overshoot of 2/eta); only its
    # time average is determined, so it is compared averaged over the same window as GD's loss
    f_pred = smooth(at(out["flow_predicted_loss"]), config.window)
    g_sharp = smooth(out["gd_sharpness"], config.window)
    g_loss = smooth(out["gd_loss"], config.window)
    diverged = bool(out["gd_diverged"]) or not np.all(np.isfinite(out["flow_loss"]))
    reach = -1 if diverged else edge_start(out["gd_sharpness"], lr)
    settled = settle_start(out["gd_loss"], reach, config.settle)
    # the flow sits at 2/eta to the Euler step's second order: within 0.1% counts as there
    flow_reach = edge_start(out["flow_eigenvalues"][:, 0] * (1 + 1e-3), lr)
    s_err, s_p90 = _rel(f_sharp, g_sharp, reach)
    l_err, l_p90 = _rel(f_pred, g_loss, reach)
    s_set, _ = _rel(f_sharp, g_sharp, settled)
    l_set, _ = _rel(f_pred, g_loss, settled)
    l_bare, _ = _rel(at(out["flow_loss"]), g_loss, reach)
    # time averages over the whole settled phase: what the flow predicts, whatever GD's cycles
    ok = slice(settled, None) if settled >= 0 else slice(0, 0)
    mean = lambda a: float(np.nanmean(a[ok])) if settled >= 0 else np.nan  # noqa: E731
    l_mean = abs(mean(f_pred) / mean(out["gd_loss"]) - 1) if settled >= 0 else np.nan
    s_mean = abs(mean(f_sharp) / mean(out["gd_sharpness"]) - 1) if settled >= 0 else np.nan
    return {
        "gd_sharpness_smooth": g_sharp,
        "gd_loss_smooth": g_loss,
        "flow_sharpness_at_steps": f_sharp,
        "flow_predicted_smooth": f_pred,
        "diverged": np.asarray(diverged),
        "reach_step": np.asarray(reach, np.int64),
        "settle_step": np.asarray(settled, np.int64),
        "flow_reach_time": np.asarray(flow_reach * dt if flow_reach >= 0 else -1.0),
        "sharpness_error": np.asarray(s_err),
        "sharpness_error_p90": np.asarray(s_p90),
        "loss_error": np.asarray(l_err),
        "loss_error_p90": np.asarray(l_p90),
        "sharpness_error_settled": np.asarray(s_set),
        "loss_error_settled": np.asarray(l_set),
        "bare_loss_error": np.asarray(l_bare),
        "sharpness_mean_error": np.asarray(s_mean),
        "loss_mean_error": np.asarray(l_mean),
    }
