"""Reproduce the early-training phase diagram of Kalra & Barkeshli 2023 (arXiv 2302.12250).

Networks of depth ``d`` and width ``w`` (ReLU MLPs, or the Myrtle-style CNN with ``arch="cnn"``)
are trained by full-batch GD for a short, fixed number of steps ``T`` at ``eta = c / lambda0``,
``lambda0`` the sharpness at the seed's initialisation on the training data, for ``c`` on a log2
grid up to divergence and several seeds. Over steps ``1..T`` (rules as in the paper):

* loss catapult iff ``max_t L_t / L_0 > 1``;
* sharpness catapult iff ``max_t lambda_t / lambda_0 > sharp_threshold`` (1 in the paper; 1.05
  guards against the estimator's noise);
* ``c_loss``, ``c_sharp`` = the smallest c with a loss / sharpness catapult;
* ``c_barrier`` = the smallest c for which the loss on the straight line ``theta_0 -> theta_T``
  rises above ``L_0`` (16 points of the segment by default);
* ``c_max`` = the largest c that does not diverge (the grid value below the first divergence).

Critical values are computed per seed and averaged over seeds. Expected: ``c_loss <= c_sharp
<= c_barrier <= c_max``; ``c_loss ~ 2`` at small ``d/w``, rising above 2 as ``d/w`` grows, where
a "sharpness reduction" phase opens (``lambda_T / lambda_0 < 1`` already for ``c < 2``).

Execution: one sweep point per ``(d, w)`` cell; its ``c x seed`` population is one vmapped,
once-compiled program (``hessian_lab.population.train_population``, per-member learning rates).

Example:
  >>> from hessian_lab.studies import early_phase_diagram as epd
  >>> r = epd.run(epd.TINY)  # doctest: +SKIP
  >>> epd.critical(r)["c_loss"].shape  # (depths, widths, seeds)  # doctest: +SKIP
  (1, 2, 1)
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
from ._early_phase_plots import draw_figures

__all__ = ["DEFAULT", "NAME", "PHASE_AXES", "TINY", "Config", "Results", "assemble", "critical"]
__all__ += ["figures", "load", "points", "run", "run_point", "save", "summary"]

NAME = "early_phase_diagram"
PHASE_AXES = ("widths", "depths")
CRITICAL = ("c_loss", "c_sharp", "c_barrier", "c_max")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the phase-diagram sweep (``c = eta * lambda0`` on a log2 grid)."""

    arch: Literal["mlp", "cnn"] = "mlp"
    depths: tuple[int, ...] = (1, 4)
    widths: tuple[int, ...] = (16, 32, 64, 128)
    param: Literal["sp", "ntk", "mup"] = "sp"
    activation: str = "relu"
    n: int = 128  # first digits examples (full batch)
    normalization: Literal["per_example", "per_output"] = "per_output"  # Kalra & Barkeshli
    seeds: tuple[int, ...] = (0, 1)
    log2_c_min: float = 0.0
    log2_c_max: float = 5.0
    num_c: int = 16  # spacing 2^(1/3): contains c = 1, 2, 4, 8, 16, 32
    num_steps: int = 20  # T
    sharpness_every: int = 1
    lanczos_iters: int = 10
    lambda0_iters: int = 30
    sharp_threshold: float = 1.05  # the paper's rule is > 1; 1.05 absorbs Lanczos noise
    barrier_points: int = 16
    divergence_loss: float = 1e4

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        need(self.arch in ("mlp", "cnn"), "arch", "'mlp' or 'cnn'")
        for f in ("depths", "widths"):
            v = getattr(self, f)
            need(len(v) >= 1 and len(set(v)) == len(v)
                 and all(isinstance(x, int) and x >= 1 for x in v), f,
                 "a non-empty tuple of distinct ints >= 1")  # fmt: skip
        need(self.param in ("sp", "ntk", "mup"), "param", "'sp', 'ntk' or 'mup'")
        need(self.activation in ("relu", "tanh", "gelu", "silu", "erf", "linear"), "activation",
             "a hessian_lab.models activation")  # fmt: skip
        need(isinstance(self.n, int) and 2 <= self.n <= 1797, "n", "an int in [2, 1797]")
        need(self.normalization in ("per_example", "per_output"), "normalization",
             "'per_example' or 'per_output'")  # fmt: skip
        need(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
             and all(isinstance(s, int) and s >= 0 for s in self.seeds), "seeds",
             "a non-empty tuple of distinct ints >= 0")  # fmt: skip
        need(self.log2_c_max > self.log2_c_min, "log2_c_max", "> log2_c_min")
        need(isinstance(self.num_c, int) and self.num_c >= 2, "num_c", "an int >= 2")
        need(isinstance(self.num_steps, int) and self.num_steps >= 1, "num_steps", "an int >= 1")
        need(isinstance(self.sharpness_every, int) and self.sharpness_every >= 1
             and self.num_steps % self.sharpness_every == 0, "sharpness_every",
             "an int >= 1 dividing num_steps")  # fmt: skip
        for f in ("lanczos_iters", "lambda0_iters"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 2, f, "an int >= 2")
        need(np.isfinite(self.sharp_threshold) and self.sharp_threshold >= 1.0,
             "sharp_threshold", "a number >= 1")  # fmt: skip
        need(isinstance(self.barrier_points, int) and self.barrier_points >= 2,
             "barrier_points", "an int >= 2")  # fmt: skip
        need(np.isfinite(self.divergence_loss) and self.divergence_loss > 0, "divergence_loss",
             "a positive number")  # fmt: skip


DEFAULT = Config()
TINY = Config(
    depths=(1,),
    widths=(64, 512),
    n=64,
    seeds=(0,),
    log2_c_min=0.5,
    log2_c_max=2.75,
    num_c=10,
    num_steps=10,
    lanczos_iters=8,
    lambda0_iters=20,
    barrier_points=8,
)


@dataclasses.dataclass
class Results:
    """Arrays over (D depths, W widths, C values of c, S seeds, T + 1 recorded steps)."""

    config: Config
    depths: np.ndarray  # (D,)
    widths: np.ndarray  # (W,)
    c: np.ndarray  # (C,)
    lambda0: np.ndarray  # (D, W, S)
    eta: np.ndarray  # (D, W, C, S)
    loss: np.ndarray  # (D, W, C, S, T+1), NaN after divergence
    sharpness: np.ndarray  # (D, W, C, S, T+1)
    line_ratio: np.ndarray  # (D, W, C, S) max_s L(theta_0 + s (theta_T - theta_0)) / L_0
    diverged: np.ndarray  # (D, W, C, S) bool


def c_grid(config: Config) -> np.ndarray:
    """The log2-spaced grid of c."""
    return 2.0 ** np.linspace(config.log2_c_min, config.log2_c_max, config.num_c)


def points(config: Config) -> list[dict]:
    """One point per (depth, width) cell."""
    return [{"depth": int(d), "width": int(w)} for d in config.depths for w in config.widths]


def problem(config: Config, depth: int, width: int) -> core.Problem:
    """The cached problem of one cell (the same object on every call: no recompilation)."""
    return core.make_problem(config.arch, depth, width, config.n, config.param,
                             config.activation, config.normalization,
                             str(jnp.result_type(float)))  # fmt: skip


def run_point(config: Config, point: dict) -> dict[str, np.ndarray]:
    """Train one cell's (c, seed) population; arrays shaped (C, S, ...)."""
    sw = core.sweep(
        problem(config, int(point["depth"]), int(point["width"])), c_grid(config), config.seeds,
        num_steps=config.num_steps, sharpness_every=config.sharpness_every,
        lanczos_iters=config.lanczos_iters, lambda0_iters=config.lambda0_iters,
        divergence_loss=config.divergence_loss, barrier_points=config.barrier_points,
    )  # fmt: skip
    return {"lambda0": sw.lambda0, "eta": sw.eta, "loss": sw.loss, "sharpness": sw.sharpness,
            "line_ratio": sw.line_ratio, "diverged": sw.diverged}  # fmt: skip


def assemble(config: Config, point_results: list[dict]) -> Results:
    """Stack the cells' arrays into :class:`Results` (``run`` == assemble over all points)."""
    D, W = len(config.depths), len(config.widths)

    def stack(k):
        a = np.stack([np.asarray(r[k]) for r in point_results])
        return a.reshape(D, W, *a.shape[1:])

    return Results(
        config=config,
        depths=np.asarray(config.depths, dtype=np.int64),
        widths=np.asarray(config.widths, dtype=np.int64),
        c=c_grid(config),
        lambda0=stack("lambda0"),
        eta=stack("eta"),
        loss=stack("loss"),
        sharpness=stack("sharpness"),
        line_ratio=stack("line_ratio"),
        diverged=stack("diverged").astype(bool),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run every cell (no I/O). ``progress(done, total)`` after each cell."""
    pts, res = points(config), []
    for i, p in enumerate(pts):
        res.append(run_point(config, p))
        if progress is not None:
            progress(i + 1, len(pts))
    return assemble(config, res)


def critical(results: Results) -> dict[str, np.ndarray]:
    """Per-member flags (D, W, C, S) and per-seed critical values (D, W, S).

    Flags: ``loss_catapult``, ``sharp_catapult``, ``barrier`` (a diverged member counts as all
    three), ``loss_ratio`` (max_t L_t/L_0), ``sharp_ratio`` (max_t lambda_t/lambda_0),
    ``final_ratio`` (lambda_T/lambda_0). Critical values ``c_loss``, ``c_sharp``, ``c_barrier``,
    ``c_max`` (NaN where the grid shows no such c).
    """
    r, thr = results, results.config.sharp_threshold
    lam0 = r.lambda0[:, :, None, :]
    loss_ratio = core.max_ratio(r.loss, r.loss[..., 0])
    sharp_ratio = core.max_ratio(r.sharpness, lam0)
    final = r.sharpness[..., -1] / lam0
    div = r.diverged
    flags = {
        "loss_catapult": (loss_ratio > 1) | div,
        "sharp_catapult": (sharp_ratio > thr) | div,
        "barrier": (r.line_ratio > 1) | div,
    }
    out = {k: v for k, v in flags.items()}
    out |= {"loss_ratio": loss_ratio, "sharp_ratio": sharp_ratio, "final_ratio": final}
    names = {"c_loss": "loss_catapult", "c_sharp": "sharp_catapult", "c_barrier": "barrier"}
    D, W, _, S = div.shape
    for name, flag in names.items():
        out[name] = np.reshape([core.critical_c(r.c, flags[flag][i, j])
                                for i in range(D) for j in range(W)], (D, W, S))  # fmt: skip
    out["c_max"] = np.reshape([core.critical_c(r.c, div[i, j], largest_before=True)
                               for i in range(D) for j in range(W)], (D, W, S))  # fmt: skip
    return out


def figures(results: Results) -> dict[str, Figure]:
    """The phase diagram in (c, d/w) with critical curves; lambda_T/lambda_0 against c."""
    return draw_figures(results, critical(results))


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load(save(r))`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Seed-averaged critical values per cell, the ordering check, and sharpness reduction."""
    cr = critical(results)
    out: dict[str, float | int | str | bool] = {"normalization": results.config.normalization}
    ordered = True
    for i, d in enumerate(results.depths):
        for j, w in enumerate(results.widths):
            tag = f"d{d}_w{w}"
            for name in CRITICAL:
                out[f"{name}_{tag}"] = float(core.nanmean(cr[name][i, j]))
            cl, cs, cm = (out[f"{k}_{tag}"] for k in ("c_loss", "c_sharp", "c_max"))
            ordered &= bool(cl <= cs <= cm) if np.isfinite([cl, cs, cm]).all() else False
            low = results.c < 2
            fr = np.where(results.diverged[i, j], np.nan, cr["final_ratio"][i, j])[low]
            out[f"lambdaT_over_lambda0_c<2_min_{tag}"] = float(np.nanmin(fr)) if np.isfinite(
                fr).any() else float("nan")  # fmt: skip
    out["ordering_c_loss_le_c_sharp_le_c_max"] = ordered
    return out
