"""Reproduce the catapult phase of large-learning-rate GD (Lewkowycz et al. 2020, arXiv 2003.02218).

Two families, each trained by full-batch GD at ``eta = c / lambda0``, with ``lambda0`` the
sharpness (top Hessian eigenvalue of the training loss) at the seed's initialisation:

* the two-layer linear network ``f = v . u x / sqrt(n)`` (``models.uv``, NTP) on one example
  ``x = 1`` with target ``y = 0``, loss ``f^2 / 2``;
* wide one-hidden-layer ReLU MLPs (``models.mlp``, NTK parameterisation) on a digits subset.

With ``y = 0`` the function-space map of the linear net is exact (``s2 = |x|^2 / n``)::

    f'     = f (1 - eta Theta + eta^2 s2 f^2)
    Theta' = Theta + eta s2 f^2 (eta Theta - 4)

so for ``eta Theta < 2`` the output decays (lazy), for ``2 < eta Theta < 4`` it first grows
(``|1 - eta Theta| > 1``) until ``eta s2 f^2 = O(1)``, which pulls ``Theta`` down until
``eta Theta < 2`` and the run converges in a flatter region (catapult), and for ``eta Theta > 4``
``Theta`` only grows and the run diverges. ``lambda0 = Theta_0 + O(1/n)``, so ``c_loss = 2`` and
``c_max = 4``. The output needs ``~ ln(n) / (2 ln(c - 1))`` steps to reach ``f^2 ~ n``: the
catapult time grows like ``log(width)``.

One population (c grid x seeds, vmapped, one compile) per width; the sweep points are
``(family, width)``.

Example:
  >>> from hessian_lab.studies import catapult
  >>> r = catapult.run(catapult.TINY)  # doctest: +SKIP
  >>> catapult.summary(r)["uv_c_max"]  # doctest: +SKIP
  4.0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies._results import load_results, save_results

from . import _catapult_core as core
from ._catapult_plots import draw_figures

__all__ = ["DEFAULT", "NAME", "TINY", "Config", "Results", "assemble", "figures", "load"]
__all__ += ["points", "run", "run_point", "save", "summary"]

NAME = "catapult"
FAMILIES = ("uv", "mlp")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the catapult study. ``c = eta * lambda0``; c grids are log2-spaced."""

    seeds: tuple[int, ...] = (0, 1, 2, 3)
    uv_widths: tuple[int, ...] = (64, 256, 1024, 4096)
    uv_log2_c_min: float = -1.0
    uv_log2_c_max: float = 3.0
    uv_num_c: int = 17  # spacing 2^(1/4): contains c = 2 and c = 4
    uv_steps: int = 200
    mlp_widths: tuple[int, ...] = (256, 1024)
    mlp_seeds: tuple[int, ...] = (0, 1)
    mlp_depth: int = 1
    mlp_param: Literal["sp", "ntk", "mup"] = "ntk"
    mlp_activation: str = "relu"
    mlp_n: int = 64  # first digits examples
    mlp_log2_c_min: float = -1.0
    mlp_log2_c_max: float = 4.5
    mlp_num_c: int = 23
    mlp_steps: int = 100
    normalization: Literal["per_example", "per_output"] = "per_example"  # MSE convention
    sharpness_every: int = 10
    lanczos_iters: int = 10
    lambda0_iters: int = 30
    divergence_loss: float = 1e6

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        for f in ("seeds", "mlp_seeds"):
            v = getattr(self, f)
            need(len(v) >= 1 and len(set(v)) == len(v) and all(int(s) >= 0 for s in v), f,
                 "a non-empty tuple of distinct ints >= 0")  # fmt: skip
        for f in ("uv_widths", "mlp_widths"):
            need(all(isinstance(w, int) and w >= 1 for w in getattr(self, f)), f,
                 "a tuple of ints >= 1")  # fmt: skip
        need(len(self.uv_widths) >= 1, "uv_widths", "non-empty")
        for f in ("uv_num_c", "mlp_num_c", "mlp_n", "lanczos_iters", "lambda0_iters"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 2, f, "an int >= 2")
        need(self.uv_log2_c_max > self.uv_log2_c_min, "uv_log2_c_max", "> uv_log2_c_min")
        need(self.mlp_log2_c_max > self.mlp_log2_c_min, "mlp_log2_c_max", "> mlp_log2_c_min")
        need(isinstance(self.mlp_depth, int) and self.mlp_depth >= 1, "mlp_depth", "an int >= 1")
        need(self.mlp_param in ("sp", "ntk", "mup"), "mlp_param", "'sp', 'ntk' or 'mup'")
        need(self.mlp_activation in ("relu", "tanh", "gelu", "silu", "erf", "linear"),
             "mlp_activation", "a hessian_lab.models activation")  # fmt: skip
        need(self.mlp_n <= 1797, "mlp_n", "<= 1797 (digits)")
        need(self.normalization in ("per_example", "per_output"), "normalization",
             "'per_example' or 'per_output'")  # fmt: skip
        need(isinstance(self.sharpness_every, int) and self.sharpness_every >= 1,
             "sharpness_every", "an int >= 1")  # fmt: skip
        for f in ("uv_steps", "mlp_steps"):
            v = getattr(self, f)
            need(isinstance(v, int) and v >= 1 and v % self.sharpness_every == 0, f,
                 "an int >= 1, a multiple of sharpness_every")  # fmt: skip
        need(np.isfinite(self.divergence_loss) and self.divergence_loss > 0, "divergence_loss",
             "a positive number")  # fmt: skip


DEFAULT = Config()
TINY = Config(
    seeds=(0, 1),
    uv_widths=(256,),
    uv_steps=60,
    mlp_widths=(),
)


@dataclasses.dataclass
class Results:
    """Arrays (W widths, C values of c, S seeds, T + 1 recorded steps) of both families."""

    config: Config
    uv_widths: np.ndarray  # (W,)
    uv_c: np.ndarray  # (C,)
    uv_lambda0: np.ndarray  # (W, S)
    uv_eta: np.ndarray  # (W, C, S)
    uv_loss: np.ndarray  # (W, C, S, T+1), NaN after divergence
    uv_sharpness: np.ndarray  # (W, C, S, T+1), NaN off cadence
    uv_diverged: np.ndarray  # (W, C, S) bool
    mlp_widths: np.ndarray
    mlp_c: np.ndarray
    mlp_lambda0: np.ndarray
    mlp_eta: np.ndarray
    mlp_loss: np.ndarray
    mlp_sharpness: np.ndarray
    mlp_diverged: np.ndarray


def c_grid(config: Config, family: str) -> np.ndarray:
    """The family's log2-spaced grid of c."""
    lo, hi, n = (getattr(config, f"{family}_{k}") for k in ("log2_c_min", "log2_c_max", "num_c"))
    return 2.0 ** np.linspace(lo, hi, n)


def points(config: Config) -> list[dict]:
    """One point per (family, width): each is one vmapped population over (c, seed)."""
    return [{"family": "uv", "width": int(w)} for w in config.uv_widths] + [
        {"family": "mlp", "width": int(w)} for w in config.mlp_widths
    ]


def _problem(config: Config, family: str, width: int) -> core.Problem:
    dtype = str(jnp.result_type(float))
    if family == "uv":
        return core.make_problem("uv", 1, width, 1, "ntp", "linear", config.normalization, dtype)
    return core.make_problem("mlp", config.mlp_depth, width, config.mlp_n, config.mlp_param,
                             config.mlp_activation, config.normalization, dtype)  # fmt: skip


def run_point(config: Config, point: dict) -> dict[str, np.ndarray]:
    """Train one (family, width) population; arrays shaped (C, S, ...)."""
    fam, width = point["family"], int(point["width"])
    seeds = config.seeds if fam == "uv" else config.mlp_seeds
    sw = core.sweep(
        _problem(config, fam, width), c_grid(config, fam), seeds,
        num_steps=getattr(config, f"{fam}_steps"), sharpness_every=config.sharpness_every,
        lanczos_iters=config.lanczos_iters, lambda0_iters=config.lambda0_iters,
        divergence_loss=config.divergence_loss,
    )  # fmt: skip
    return {"lambda0": sw.lambda0, "eta": sw.eta, "loss": sw.loss, "sharpness": sw.sharpness,
            "diverged": sw.diverged}  # fmt: skip


def assemble(config: Config, point_results: list[dict]) -> Results:
    """Stack the points' arrays into :class:`Results` (``run`` == assemble over all points)."""
    out = {}
    pts = points(config)
    for fam in FAMILIES:
        rs = [r for p, r in zip(pts, point_results, strict=True) if p["family"] == fam]
        widths = getattr(config, f"{fam}_widths")
        C = c_grid(config, fam).size
        S = len(config.seeds if fam == "uv" else config.mlp_seeds)
        T = getattr(config, f"{fam}_steps") + 1

        def stack(k, shape, dtype=float, rs=rs):
            return np.stack([np.asarray(r[k]) for r in rs]) if rs else np.zeros(shape, dtype)

        out[f"{fam}_widths"] = np.asarray(widths, dtype=np.int64)
        out[f"{fam}_c"] = c_grid(config, fam)
        out[f"{fam}_lambda0"] = stack("lambda0", (0, S))
        out[f"{fam}_eta"] = stack("eta", (0, C, S))
        out[f"{fam}_loss"] = stack("loss", (0, C, S, T))
        out[f"{fam}_sharpness"] = stack("sharpness", (0, C, S, T))
        out[f"{fam}_diverged"] = stack("diverged", (0, C, S), bool).astype(bool)
    return Results(config=config, **out)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run every point (no I/O). ``progress(done, total)`` after each population."""
    pts, res = points(config), []
    for i, p in enumerate(pts):
        res.append(run_point(config, p))
        if progress is not None:
            progress(i + 1, len(pts))
    return assemble(config, res)


def critical(results: Results, family: str) -> dict[str, np.ndarray]:
    """Per (width, seed): ``c_loss`` (first loss catapult) and ``c_max`` (last c before divergence);
    per (width, c, seed): ``loss_ratio`` = max_t L_t / L_0, ``final_x_lr`` = eta lambda_T,
    ``t_peak`` (step of the loss maximum) and ``t_return`` (first step after the peak with
    L_t < L_0); -1 where there is no catapult.
    """
    r = results
    c, loss = getattr(r, f"{family}_c"), getattr(r, f"{family}_loss")
    lam, div = getattr(r, f"{family}_sharpness"), getattr(r, f"{family}_diverged")
    ratio = core.max_ratio(loss, loss[..., 0])
    cat = (ratio > 1) | div
    c_loss = np.reshape([core.critical_c(c, e) for e in cat], (div.shape[0], div.shape[-1]))
    c_max = np.reshape([core.critical_c(c, d, largest_before=True) for d in div],
                       (div.shape[0], div.shape[-1]))  # fmt: skip
    final = lam[..., -1] * getattr(r, f"{family}_eta")
    safe = np.where(np.isfinite(loss), loss, -np.inf)
    t_peak = np.argmax(safe, axis=-1)
    below = (np.arange(loss.shape[-1]) > t_peak[..., None]) & (loss < loss[..., :1])
    t_ret = np.where(below.any(-1), np.argmax(below, axis=-1), -1)
    ok = (ratio > 1) & ~div
    return {"c_loss": c_loss, "c_max": c_max, "loss_ratio": ratio, "final_x_lr": final,
            "t_peak": np.where(ok, t_peak, -1), "t_return": np.where(ok, t_ret, -1)}  # fmt: skip


def figures(results: Results) -> dict[str, Figure]:
    """Loss/sharpness trajectories, the regimes against c, catapult time against width."""
    return draw_figures(results, critical)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load(save(r))`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Key numbers: c_loss, c_max (mean over seeds) per family and width; catapult times; slope."""
    out: dict[str, float | int | str | bool] = {"normalization": results.config.normalization}
    for fam in FAMILIES:
        widths = getattr(results, f"{fam}_widths")
        if widths.size == 0:
            continue
        cr = critical(results, fam)
        out[f"{fam}_c_loss"] = float(core.nanmean(cr["c_loss"]))
        out[f"{fam}_c_max"] = float(core.nanmean(cr["c_max"]))
        for i, w in enumerate(widths):
            out[f"{fam}_c_loss_w{w}"] = float(core.nanmean(cr["c_loss"][i]))
            out[f"{fam}_c_max_w{w}"] = float(core.nanmean(cr["c_max"][i]))
            out[f"{fam}_lambda0_w{w}"] = float(np.mean(getattr(results, f"{fam}_lambda0")[i]))
        c = getattr(results, f"{fam}_c")
        band = (c > 2) & (c < 4)
        cat = (cr["loss_ratio"] > 1) & ~getattr(results, f"{fam}_diverged")
        fin = cr["final_x_lr"][:, band][cat[:, band]]
        out[f"{fam}_catapult_runs"] = int(cat[:, band].sum())
        out[f"{fam}_catapult_final_x_lr_max"] = float(np.max(fin)) if fin.size else float("nan")
    slope = catapult_time_slope(results)
    for c, s in slope.items():
        out[f"uv_t_peak_per_ln_width_c{c:.3f}"] = s
    return out


def catapult_time_slope(results: Results) -> dict[float, float]:
    """Least-squares slope of the mean loss-peak step against ln(width), per c in (2, 4)."""
    cr = critical(results, "uv")
    c, widths = results.uv_c, results.uv_widths
    out = {}
    if widths.size < 2:
        return out
    for j in np.flatnonzero((c > 2) & (c < 4)):
        t = cr["t_peak"][:, j, :].astype(float)
        t = np.where(t >= 0, t, np.nan)
        mean = core.nanmean(t, axis=-1)
        ok = np.isfinite(mean)
        if ok.sum() >= 2:
            out[float(c[j])] = float(np.polyfit(np.log(widths[ok]), mean[ok], 1)[0])
    return out
