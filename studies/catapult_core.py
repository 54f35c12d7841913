"""The catapult study's helpers: grids, widths, the user's problem, the critical values.

Split from :mod:`hessian_lab.studies.catapult` to keep both under 400 lines. Functions take any
object with the study Config's (or Results') fields.
"""

from __future__ import annotations

import numpy as np

from hessian_lab.problem import Problem

from . import problems_user as pu
from . import stats

__all__ = ["c_grid", "catapult_time_slope", "critical", "seeds_of", "user_problem", "widths"]
__all__ += ["within_a_grid_step"]


def c_grid(config, family: str) -> np.ndarray:
    """The family's log2-spaced grid of c."""
    lo, hi, n = (getattr(config, f"{family}_{k}") for k in ("log2_c_min", "log2_c_max", "num_c"))
    return 2.0 ** np.linspace(lo, hi, n)


def seeds_of(config, family: str) -> tuple[int, ...]:
    """The family's initialisation seeds."""
    return config.seeds if family == "uv" else config.mlp_seeds


def widths(config, family: str) -> tuple[int, ...]:
    """The family's widths; your problem's: ``problem_widths``, or 0 (its own width)."""
    if family == "mlp" and config.problem:
        return config.problem_widths or (0,)
    return getattr(config, f"{family}_widths")


def user_problem(config, width: int) -> Problem:
    """The user's problem at ``width`` (0: as ``problem_args`` give it), first ``mlp_n``
    examples, its ``seed`` argument the first of ``mlp_seeds``."""
    args = (*config.problem_args, f"width={width}") if width else config.problem_args
    seed = config.mlp_seeds[0]
    return pu.user_problem(config.problem, data=config.data, args=args, seed=seed,
                           n=config.mlp_n, study="catapult")  # fmt: skip


def critical(results, family: str) -> dict[str, np.ndarray]:
    """Per (width, seed): ``c_loss`` (first loss catapult) and ``c_max`` (last c before divergence);
    per (width, c, seed): ``loss_ratio`` = max_t L_t / L_0, ``final_x_lr`` = eta lambda_T,
    ``t_peak`` (step of the loss maximum) and ``t_return`` (first step after the peak with
    L_t < L_0); -1 where there is no catapult (or the run diverged).
    """
    r = results
    c, loss = getattr(r, f"{family}_c"), getattr(r, f"{family}_loss")
    lam, div = getattr(r, f"{family}_sharpness"), getattr(r, f"{family}_diverged")
    ratio = stats.max_ratio(loss, loss[..., 0])
    safe = np.where(np.isfinite(loss), loss, -np.inf)
    t_peak = np.argmax(safe, axis=-1)
    below = (np.arange(loss.shape[-1]) > t_peak[..., None]) & (loss < loss[..., :1])
    t_ret = np.where(below.any(-1), np.argmax(below, axis=-1), -1)
    ok = (ratio > 1) & ~div
    return {
        "c_loss": stats.critical_c(c, (ratio > 1) | div),  # a diverged member's loss rose too
        "c_max": stats.critical_c(c, div, largest_before=True),
        "loss_ratio": ratio,
        "final_x_lr": lam[..., -1] * getattr(r, f"{family}_eta"),
        "t_peak": np.where(ok, t_peak, -1),
        "t_return": np.where(ok, t_ret, -1),
    }


def catapult_time_slope(results) -> dict[float, float]:
    """Least-squares slope of the mean loss-peak step against ln(width), per c in (2, 4)."""
    cr, c, widths = critical(results, "uv"), results.uv_c, results.uv_widths
    out = {}
    for j in np.flatnonzero((c > 2) & (c < 4)) if widths.size >= 2 else []:
        t = cr["t_peak"][:, j, :].astype(float)
        mean = stats.nanmean(np.where(t >= 0, t, np.nan), axis=-1)
        ok = np.isfinite(mean)
        if ok.sum() >= 2:
            out[float(c[j])] = float(np.polyfit(np.log(widths[ok]), mean[ok], 1)[0])
    return out


def within_a_grid_step(values: np.ndarray, c: np.ndarray, ref: float) -> bool:
    """Every value (per width and seed) lies within one log2 grid step of ``ref``."""
    return bool(np.all(np.abs(np.log2(values / ref)) <= np.log2(c[1] / c[0]) + 1e-9))
