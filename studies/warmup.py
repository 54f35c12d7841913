"""Why warm up the learning rate: sharpness during linear warmup, trainability, eta_init, GI-Adam.

Kalra & Barkeshli 2024 (arXiv 2406.09405). An MLP on scikit-learn's digits (MSE, full-batch GD)
in SP (O(1) initial outputs) and muP (O(1/width) outputs) is trained with the linear warmup
``eta_t = eta_init + (eta_trgt - eta_init) t / T_wrm``. Learning rates are given in units of the
initial sharpness, ``c = eta lambda0`` (lambda0 by Lanczos on the training set, per seed).

What ``run`` measures:

1. Trajectories: the sharpness lambda_t against 2/eta_t. SP: lambda falls on its own (sharpness
   reduction) and a loss catapult occurs whenever eta_t > 2/lambda_t; muP: progressive sharpening
   until eta_t lambda_t ~ 2, then lambda_t tracks 2/eta_t.
2. Trainability: the largest trainable c_trgt against T_wrm, with eta_init = 0 and with eta_init
   from the catapult search. "Trainable" = not diverged and the final training loss below
   ``trainable_fraction`` times the loss of the best constant predictor.
3. The loss-catapult search for eta_init (:func:`hessian_lab.lr_search.catapult_search`): its
   estimate against the number of test steps, compared with 2/lambda0.
4. Adam against GI-Adam (second moment initialised to g0^2), with and without warmup, including the
   preconditioned sharpness at initialisation (smaller for GI-Adam by 1/sqrt(1 - b2) when eps = 0).

Example:
  >>> from hessian_lab.studies import warmup
  >>> r = warmup.run(warmup.TINY)  # doctest: +SKIP
  >>> warmup.summary(r)["gi_adam_precond_ratio"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax
import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies._results import load_results, save_results

from . import _warmup_figs
from . import _warmup_runs as wr

__all__ = [
    "DEFAULT",
    "NAME",
    "TINY",
    "Config",
    "Results",
    "figures",
    "load",
    "run",
    "save",
    "summary",
]

NAME = "warmup"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the warmup study. Rates for GD are in units of c = eta lambda0."""

    n: int = 256  # digits examples (standardised per sample)
    depth: int = 2
    width: int = 64
    normalization: Literal["per_output", "per_example"] = "per_output"  # MSE convention
    params: tuple[str, ...] = ("sp", "mup")
    # muP without biases: a bias has forward multiplier 1 (hessian_lab.models), so the readout bias
    # alone has curvature 1/out_dim (per_output) at any width, above muP's O(1/width) weight NTK;
    # that linear direction is then the top one and cannot catapult (see docs).
    mup_bias: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    lanczos_iters: int = 20
    sharpness_every: int = 5
    # trajectories (first seed)
    traj_c_trgt: tuple[float, ...] = (8.0, 16.0)
    traj_warmup_steps: int = 200
    traj_steps: int = 300
    # trainability grid
    warmup_grid: tuple[int, ...] = (1, 8, 32, 128)
    c_min: float = 1.0
    c_max: float = 512.0
    num_c: int = 10
    post_steps: int = 150  # steps after the longest warmup (every member runs the same total)
    trainable_fraction: float = 0.5
    divergence_factor: float = 1e4  # loss above this times the constant-predictor loss: diverged
    # catapult search
    search_steps: tuple[int, ...] = (1, 2, 3, 5, 10, 20)
    search_eta_min: float = 1e-3
    search_growth: float = 2.0
    search_bisect_iters: int = 6
    init_search_steps: int = 10  # test steps of the estimate used as eta_init
    # Adam vs GI-Adam (SP model, first seed); absolute learning rates
    adam_eta_min: float = 1e-3
    adam_eta_max: float = 0.3
    adam_num_eta: int = 6
    adam_warmup_steps: int = 100
    adam_steps: int = 200
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    chunk_size: int = 32

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        def pos_int(f):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f, "an int >= 1")

        for f in ("n", "depth", "width", "lanczos_iters", "sharpness_every", "traj_steps"):
            pos_int(f)
        for f in ("num_c", "post_steps", "init_search_steps", "adam_num_eta", "adam_steps"):
            pos_int(f)
        pos_int("chunk_size")
        need(self.n <= 1797, "n", "<= 1797 (the digits examples)")
        need(self.normalization in ("per_output", "per_example"), "normalization",
             "'per_output' or 'per_example'")  # fmt: skip
        need(len(self.params) >= 1 and set(self.params) <= {"sp", "mup"}
             and len(set(self.params)) == len(self.params), "params",
             "distinct values from ('sp', 'mup')")  # fmt: skip
        need(len(self.seeds) >= 1 and all(isinstance(s, int) and s >= 0 for s in self.seeds),
             "seeds", "a non-empty tuple of ints >= 0")  # fmt: skip
        need(len(self.traj_c_trgt) >= 1 and all(c > 0 for c in self.traj_c_trgt),
             "traj_c_trgt", "positive numbers")  # fmt: skip
        need(isinstance(self.traj_warmup_steps, int) and self.traj_warmup_steps >= 0,
             "traj_warmup_steps", "an int >= 0")  # fmt: skip
        need(len(self.warmup_grid) >= 1 and all(isinstance(t, int) and t >= 0
             for t in self.warmup_grid), "warmup_grid", "ints >= 0")  # fmt: skip
        need(0 < self.c_min < self.c_max and np.isfinite(self.c_max), "c_max", "> c_min > 0")
        need(0 < self.trainable_fraction < 1, "trainable_fraction", "in (0, 1)")
        need(isinstance(self.mup_bias, bool), "mup_bias", "a bool")
        need(self.divergence_factor > 1, "divergence_factor", "> 1")
        need(len(self.search_steps) >= 1 and all(isinstance(k, int) and 1 <= k < self.chunk_size
             for k in self.search_steps), "search_steps", "ints in [1, chunk_size)")  # fmt: skip
        need(1 <= self.init_search_steps < self.chunk_size, "init_search_steps",
             "in [1, chunk_size)")  # fmt: skip
        need(self.search_eta_min > 0, "search_eta_min", "> 0")
        need(self.search_growth > 1, "search_growth", "> 1")
        need(isinstance(self.search_bisect_iters, int) and self.search_bisect_iters >= 0,
             "search_bisect_iters", "an int >= 0")  # fmt: skip
        need(0 < self.adam_eta_min <= self.adam_eta_max, "adam_eta_max", ">= adam_eta_min > 0")
        need(isinstance(self.adam_warmup_steps, int) and self.adam_warmup_steps >= 1,
             "adam_warmup_steps", "an int >= 1")  # fmt: skip
        need(0 <= self.b1 < 1, "b1", "in [0, 1)")
        need(0 <= self.b2 < 1, "b2", "in [0, 1)")
        need(self.eps >= 0 and np.isfinite(self.eps), "eps", "finite and >= 0")


DEFAULT = Config()
TINY = Config(  # SP only: each parameterisation costs two compiled programs (the muP half is DEFAULT's)
    n=32,
    depth=1,
    width=16,
    params=("sp",),
    seeds=(0,),
    lanczos_iters=10,
    traj_c_trgt=(16.0,),
    traj_warmup_steps=24,
    traj_steps=32,
    sharpness_every=4,
    warmup_grid=(1, 16),
    c_min=2.0,
    c_max=64.0,
    num_c=4,
    post_steps=16,
    trainable_fraction=0.9,
    search_steps=(1, 10),
    search_bisect_iters=3,
    init_search_steps=10,
    adam_num_eta=2,
    adam_eta_min=0.01,
    adam_eta_max=0.1,
    adam_warmup_steps=8,
    adam_steps=16,
    chunk_size=32,
)


@dataclasses.dataclass
class Results:
    """Arrays of one run. Axes: M params (sp/mup), S seeds, C trajectory targets, T steps,
    I eta_init modes (zero, catapult), W warmup lengths, E target rates, K search step counts,
    O optimizers (adam, gi_adam), U warmup (none, linear), A Adam rates."""

    config: Config
    lam0: np.ndarray  # (M, S) sharpness at initialisation (Lanczos)
    loss0: np.ndarray  # (M, S)
    loss_const: np.ndarray  # () loss of the best constant predictor (trainability scale)
    traj_loss: np.ndarray  # (M, C, T)
    traj_lr: np.ndarray  # (M, C, T) eta_t
    traj_sharpness: np.ndarray  # (M, C, T) NaN off-cadence
    traj_catapult: np.ndarray  # (M, C, T) 1.0 where L_t > L_0
    c_grid: np.ndarray  # (E,)
    final_loss: np.ndarray  # (M, I, W, E, S) NaN where diverged
    diverged: np.ndarray  # (M, I, W, E, S) bool
    trainable: np.ndarray  # (M, I, W, E, S) bool
    c_trainable: np.ndarray  # (M, I, W) largest c trainable for most seeds (0 if none)
    eta_init: np.ndarray  # (M, S) catapult estimate used as eta_init
    search_estimate: np.ndarray  # (M, S, K) catapult-search estimate of eta_c
    search_trials: np.ndarray  # (M, S, K)
    adam_eta: np.ndarray  # (A,)
    adam_final_loss: np.ndarray  # (O, U, A) NaN where diverged
    adam_diverged: np.ndarray  # (O, U, A)
    adam_precond: np.ndarray  # (O, U, A, T) preconditioned sharpness, NaN off-cadence
    adam_loss: np.ndarray  # (O, U, A, T)
    precond0: np.ndarray  # (O,) preconditioned sharpness at initialisation
    precond0_eps0: np.ndarray  # (O,) the same with eps = 0
    elapsed: np.ndarray  # () seconds


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O). ``progress(done, total)`` is called after each stage."""
    t0 = time.perf_counter()
    total = 4 * len(config.params) + 1
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with jax.enable_x64(True):
        data = wr.dataset(config)
        out = wr.gd_part(config, data, tick)
        out |= wr.adam_part(config, data)
        tick()
    return Results(config=config, elapsed=np.asarray(time.perf_counter() - t0), **out)


def figures(results: Results) -> dict[str, Figure]:
    """Sharpness vs 2/eta_t, trainable range, catapult search, Adam vs GI-Adam (Agg figures)."""
    return _warmup_figs.draw(results)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load`` after ``save`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Key numbers: lambda0, sharpness change, trainable c per T_wrm, search accuracy, GI ratio."""
    r, cfg, out = results, results.config, {}
    out["loss_normalization"] = cfg.normalization
    for m, p in enumerate(cfg.params):
        out[f"{p}_lambda0"] = float(r.lam0[m, 0])
        for c, ct in enumerate(cfg.traj_c_trgt):
            s = r.traj_sharpness[m, c]
            ok = np.flatnonzero(np.isfinite(s))
            if ok.size:
                out[f"{p}_c{ct:g}_sharpness_final_over_lambda0"] = float(s[ok[-1]] / r.lam0[m, 0])
                out[f"{p}_c{ct:g}_eta_lambda_final"] = float(s[ok[-1]] * r.traj_lr[m, c, ok[-1]])
                out[f"{p}_c{ct:g}_sharpness_max_over_lambda0"] = float(np.max(s[ok]) / r.lam0[m, 0])
            out[f"{p}_c{ct:g}_catapult_steps"] = int(np.nansum(r.traj_catapult[m, c]))
        for i, mode in enumerate(("zero", "catapult")):
            for w, tw in enumerate(cfg.warmup_grid):
                out[f"{p}_c_trainable_T{tw}_init_{mode}"] = float(r.c_trainable[m, i, w])
        for k, ks in enumerate(cfg.search_steps):
            ratio = r.search_estimate[m, :, k] * r.lam0[m] / 2
            out[f"{p}_search_k{ks}_estimate_over_2_lambda0"] = float(np.mean(ratio))
    out["gi_adam_precond_ratio"] = float(r.precond0[0] / r.precond0[1])
    out["gi_adam_precond_ratio_eps0"] = float(r.precond0_eps0[0] / r.precond0_eps0[1])
    out["expected_ratio_1_over_sqrt_1_minus_b2"] = float(1 / np.sqrt(1 - cfg.b2))
    for o, name in enumerate(("adam", "gi_adam")):
        out[f"{name}_precond_sharpness0"] = float(r.precond0[o])
        for u, wname in enumerate(("const", "warmup")):
            ok = ~r.adam_diverged[o, u] & np.isfinite(r.adam_final_loss[o, u])
            good = ok & (r.adam_final_loss[o, u] < cfg.trainable_fraction * r.loss_const)
            out[f"{name}_{wname}_max_trainable_eta"] = float(
                np.max(r.adam_eta[good]) if good.any() else 0.0
            )
    out["elapsed_s"] = float(r.elapsed)
    return out
