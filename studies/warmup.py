"""Why warm up the learning rate: sharpness during linear warmup, trainability, eta_init, GI-Adam.

Kalra & Barkeshli 2024 (arXiv 2406.09405). An MLP on scikit-learn's digits (MSE, full-batch GD)
in SP (O(1) initial outputs) and muP (O(1/width) outputs) is trained with the linear warmup
``eta_t = eta_init + (eta_trgt - eta_init) t / T_wrm``. Learning rates are given in units of the
initial sharpness, ``c = eta lambda0`` (lambda0 by Lanczos on the training set, per seed).
``problem``/``data``/``problem_args`` train your own network instead of the two MLPs
(docs/own_network.md); then "trainable" compares with its loss at initialisation.

What ``run`` measures (the runs are in :mod:`hessian_lab.studies.warmup_core`):

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
from typing import Any, Literal

import jax
import numpy as np
from matplotlib.figure import Figure

from . import kit
from . import problems_user as pu
from . import warmup_core as core
from . import warmup_plots as plots
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results", "figures"]
__all__ += ["check_inputs", "load", "names", "run", "save", "summary", "verdict"]

NAME = "warmup"
PAPER = "Kalra & Barkeshli 2024, arXiv 2406.09405"
DOCS = "docs/studies/warmup.md"
PARAMS = {"sp": "SP", "mup": "muP"}
OPTIMIZER_NAMES = {"adam": "Adam", "gi_adam": "GI-Adam"}


# The TINY preset's MLP: accepted (unused) beside the defaults when problem is set.
TINY_MLP = {"depth": 1, "width": 16, "params": ("sp",)}


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the warmup study. Rates for GD are in units of c = eta lambda0."""

    problem: str = knob("", pu.PROBLEM_DOC)
    data: str = knob("digits", pu.DATA_DOC)
    problem_args: tuple[str, ...] = knob((), pu.ARGS_DOC)
    n: int = knob(256, "training examples (the MLP's standardised per sample)")
    depth: int = knob(2, "hidden layers of the MLP")
    width: int = knob(64, "units per hidden layer")
    normalization: Literal["per_output", "per_example"] = knob(
        "per_output", "MSE convention: 1/(2 n outputs) sum ||f-y||^2, or 1/(2n) sum"
    )
    params: tuple[str, ...] = knob(("sp", "mup"), "parameterisations trained (sp, mup)")
    # A bias has forward multiplier 1 (hessian_lab.models), so a muP readout bias alone has
    # curvature 1/out_dim at any width, above muP's O(1/width) weight NTK (see the docs).
    mup_bias: bool = knob(False, "give the muP MLP biases (they dominate its curvature)")
    seeds: tuple[int, ...] = knob((0, 1, 2), "initialisation seeds")
    lanczos_iters: int = knob(20, "Lanczos iterations per sharpness measurement")
    sharpness_every: int = knob(5, "measure the sharpness every k steps")
    traj_c_trgt: tuple[float, ...] = knob((8.0, 16.0), "trajectories: target c = eta lambda0")
    traj_warmup_steps: int = knob(200, "trajectories: warmup length T_wrm")
    traj_steps: int = knob(300, "trajectories: GD steps (first seed)")
    warmup_grid: tuple[int, ...] = knob((1, 8, 32, 128), "trainability: warmup lengths T_wrm")
    c_min: float = knob(1.0, "trainability: smallest target c (log grid)")
    c_max: float = knob(512.0, "trainability: largest target c")
    num_c: int = knob(10, "trainability: target c grid points")
    post_steps: int = knob(150, "trainability: steps after the longest warmup (for every member)")
    trainable_fraction: float = knob(
        0.5, "trainable: final loss below this x constant-predictor loss"
    )
    divergence_factor: float = knob(1e4, "diverged: loss above this x constant-predictor loss")
    search_steps: tuple[int, ...] = knob((1, 2, 3, 5, 10, 20), "catapult search: test steps k")
    search_eta_min: float = knob(1e-3, "catapult search: first eta tried")
    search_growth: float = knob(2.0, "catapult search: factor between rates while bracketing")
    search_bisect_iters: int = knob(6, "catapult search: log-bisections after bracketing")
    init_search_steps: int = knob(10, "test steps of the estimate used as eta_init")
    adam_eta_min: float = knob(1e-3, "Adam vs GI-Adam (SP, first seed): smallest eta_trgt")
    adam_eta_max: float = knob(0.3, "Adam vs GI-Adam: largest eta_trgt")
    adam_num_eta: int = knob(6, "Adam vs GI-Adam: eta_trgt grid points (log)")
    adam_warmup_steps: int = knob(100, "Adam vs GI-Adam: warmup length of the warmup runs")
    adam_steps: int = knob(200, "Adam vs GI-Adam: steps per run")
    b1: float = knob(0.9, "Adam's b1")
    b2: float = knob(0.999, "Adam's b2")
    eps: float = knob(1e-8, "Adam's eps")
    chunk_size: int = knob(32, "steps per compiled chunk (> every catapult test length)")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_ints(self, "n", "width", "lanczos_iters", "sharpness_every")
        kit.check_ints(self, "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "traj_steps", "num_c", "post_steps", "init_search_steps")
        kit.check_ints(self, "adam_num_eta", "adam_steps", "chunk_size", "adam_warmup_steps")
        kit.check_ints(self, "traj_warmup_steps", "search_bisect_iters", minimum=0)
        mlp = ("depth", "width", "params", "mup_bias")
        pu.check_problem_fields(self, mlp, n_field="n", preset=TINY_MLP)
        kit.check_choice(self, "normalization", ("per_output", "per_example"))
        need(len(self.params) >= 1 and set(self.params) <= set(PARAMS)
             and len(set(self.params)) == len(self.params), self, "params",
             "distinct values from ('sp', 'mup')")  # fmt: skip
        need(isinstance(self.mup_bias, bool), self, "mup_bias", "a bool")
        kit.check_seeds(self, "seeds")
        kit.check_int_tuple(self, "warmup_grid", minimum=0, distinct=False)
        kit.check_int_tuple(self, "search_steps", distinct=False)
        kit.check_rates(self, "traj_c_trgt")
        kit.check_positive(self, "c_min", "c_max", "search_eta_min", "adam_eta_min", "adam_eta_max")
        need(self.c_min < self.c_max, self, "c_max", "> c_min")
        need(0 < self.trainable_fraction < 1, self, "trainable_fraction", "in (0, 1)")
        need(self.divergence_factor > 1, self, "divergence_factor", "> 1")
        need(max(self.search_steps) < self.chunk_size, self, "search_steps", "< chunk_size")
        need(self.init_search_steps < self.chunk_size, self, "init_search_steps", "< chunk_size")
        need(self.search_growth > 1, self, "search_growth", "> 1")
        need(self.adam_eta_min <= self.adam_eta_max, self, "adam_eta_max", ">= adam_eta_min")
        need(0 <= self.b1 < 1, self, "b1", "in [0, 1)")
        need(0 <= self.b2 < 1, self, "b2", "in [0, 1)")
        kit.check_positive(self, "eps", allow_zero=True)


def check_inputs(config: Config) -> None:
    """Before any work: the user's problem and data build, its init depends on the seed (with
    several ``seeds``), and ``lanczos_iters`` fits each trained net (``jax.eval_shape``).

    Raises:
      ValueError: naming the field.
    """
    with jax.enable_x64(True):
        probs = pu.checked(config, core.problems_of, "n")  # None on digits, built in
        if config.problem:
            pu.check_seeds_vary(probs["problem"], config, "seeds")
    nets = [core.model(config, p)[0] for p in config.params] if probs is None else [
        prob.model for prob in probs.values()]  # fmt: skip
    limit = min(kit.num_params(net) for net in nets)
    kit.check_budget(config, "lanczos_iters", limit, "the parameter count of the smallest net")


DEFAULT = Config()
TINY = Config(  # SP only: each parameterisation costs two compiled programs (the muP half is DEFAULT's)
    **TINY_MLP,
    n=32,
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
    """Arrays of one run. Axes: M networks (params: sp/mup; or the user's problem), S seeds, C trajectory targets, T steps,
    I eta_init modes (zero, catapult), W warmup lengths, E target rates, K search step counts,
    O optimizers (adam, gi_adam), U warmup (constant, linear), A Adam rates."""

    config: Any
    lam0: np.ndarray  # (M, S) sharpness at initialisation (Lanczos)
    loss0: np.ndarray  # (M, S)
    loss_const: np.ndarray  # () trainability scale: best constant predictor's loss (your problem:
    # the loss at initialisation, first seed)
    traj_loss: np.ndarray  # (M, C, T)
    traj_lr: np.ndarray  # (M, C, T) eta_t
    traj_sharpness: np.ndarray  # (M, C, T) NaN off-cadence
    traj_catapult: np.ndarray  # (M, C, T) 1.0 where L_t > L_0
    traj_diverged: np.ndarray  # (M, C) bool
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
    """Run the whole study (no I/O); ``progress(done, total)`` counts training steps."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    t0 = time.perf_counter()
    counter = kit.StepCounter(core.total_steps(config), progress)
    with jax.enable_x64(True):
        probs = core.problems_of(config)
        out = core.gd_part(config, probs, counter)
        out |= core.adam_part(config, probs["problem" if config.problem else "sp"], counter)
    counter.finish()
    return Results(config=config, elapsed=np.asarray(time.perf_counter() - t0), **out)


def figures(results: Results) -> dict[str, Figure]:
    """Sharpness vs 2/eta_t, trainable range, catapult search, Adam vs GI-Adam."""
    r = results
    return {
        "warmup_sharpness": plots.sharpness(r, names(r.config)),
        "warmup_trainability": plots.trainability(r, names(r.config)),
        "warmup_catapult_search": plots.search(r, names(r.config)),
        "warmup_adam": plots.adam(r, list(OPTIMIZER_NAMES.values())),
    }


METRICS = {
    "lambda0": kit.Metric("sharpness at initialisation (median over seeds)", "1/lr"),
    "sharpness_final_over_lambda0": kit.Metric("trajectory: last measured sharpness / lambda0"),
    "sharpness_max_over_lambda0": kit.Metric("trajectory: largest sharpness / lambda0"),
    "eta_lambda_final": kit.Metric("trajectory: eta_t x sharpness at the last measurement"),
    "catapult_steps": kit.Metric("trajectory: steps with L_t > L_0 (loss catapults)", "steps"),
    "c_trainable": kit.Metric("largest trainable c_trgt = eta_trgt lambda0 (most seeds; 0: none)"),
    "search_over_2_lambda0": kit.Metric("catapult-search estimate / (2/lambda0), seed mean"),
    "precond_sharpness0": kit.Metric("preconditioned sharpness lambda_max(P^-1 H) at init", "1/lr"),
    "gi_adam_precond_ratio": kit.Metric("Adam / GI-Adam preconditioned sharpness at init"),
    "gi_adam_precond_ratio_eps0": kit.Metric("the same with eps = 0 (NaN: a zero gradient)"),
    "expected_ratio": kit.Metric("1/sqrt(1 - b2), the ratio at eps = 0"),
    "max_trainable_eta": kit.Metric("Adam runs: largest trainable eta_trgt (0: none)", "lr"),
    "num_diverged": kit.Metric("runs that diverged (left out of every statistic)", "runs"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def names(cfg) -> list[str]:
    """Readers' names of the networks trained: SP, muP, or the user's problem."""
    return [pu.label(cfg) if v == "problem" else PARAMS[v] for v in core.variants(cfg)]


def _traj_label(cfg, m: int, c: int) -> str:
    return f"{names(cfg)[m]} c_trgt={cfg.traj_c_trgt[c]:g}"


def _trajectory(r: Results, m: int, c: int) -> dict[str, float]:
    """A trajectory's statistics; NaN where it diverged (nothing computed from its curve)."""
    s, lam0 = r.traj_sharpness[m, c], r.lam0[m, 0]
    ok = np.flatnonzero(np.isfinite(s))
    if r.traj_diverged[m, c] or not ok.size:
        return dict.fromkeys(("final", "max", "eta_lambda", "catapults"), np.nan)
    return {
        "final": float(s[ok[-1]] / lam0),
        "max": float(np.max(s[ok]) / lam0),
        "eta_lambda": float(s[ok[-1]] * r.traj_lr[m, c, ok[-1]]),
        "catapults": int(np.nansum(r.traj_catapult[m, c])),
    }


def _max_trainable_eta(r: Results, o: int, u: int) -> float:
    ok = ~r.adam_diverged[o, u] & np.isfinite(r.adam_final_loss[o, u])
    good = ok & (r.adam_final_loss[o, u] < r.config.trainable_fraction * r.loss_const)
    return float(np.max(r.adam_eta[good])) if good.any() else 0.0


def summary(results: Results) -> dict[str, Any]:
    """lambda0, sharpness along warmup, trainable c per T_wrm, search accuracy, GI-Adam ratio."""
    r, cfg = results, results.config
    M, C = len(core.variants(cfg)), len(cfg.traj_c_trgt)
    traj = {_traj_label(cfg, m, c): _trajectory(r, m, c) for m in range(M) for c in range(C)}
    per_traj = lambda k: {lab: t[k] for lab, t in traj.items()}  # noqa: E731
    c_tr, search, diverged = {}, {}, {}
    for m, p in enumerate(names(cfg)):
        for i, mode in enumerate(("0", "catapult")):
            for w, tw in enumerate(cfg.warmup_grid):
                c_tr[f"{p} T_wrm={tw}, eta_init={mode}"] = float(r.c_trainable[m, i, w])
        for k, ks in enumerate(cfg.search_steps):
            ratio = r.search_estimate[m, :, k] * r.lam0[m] / 2
            search[f"{p} k={ks}"] = float(np.mean(ratio))
        diverged[f"{p} trainability"] = int(np.sum(r.diverged[m]))
        diverged[f"{p} trajectories"] = int(np.sum(r.traj_diverged[m]))
    diverged["Adam and GI-Adam"] = int(np.sum(r.adam_diverged))
    opts = list(OPTIMIZER_NAMES.values())
    return {
        "lambda0": {p: float(np.median(r.lam0[m])) for m, p in enumerate(names(cfg))},
        "sharpness_final_over_lambda0": per_traj("final"),
        "sharpness_max_over_lambda0": per_traj("max"),
        "eta_lambda_final": per_traj("eta_lambda"),
        "catapult_steps": per_traj("catapults"),
        "c_trainable": c_tr,
        "search_over_2_lambda0": search,
        "precond_sharpness0": {n: float(r.precond0[o]) for o, n in enumerate(opts)},
        "gi_adam_precond_ratio": float(r.precond0[0] / r.precond0[1]),
        "gi_adam_precond_ratio_eps0": float(r.precond0_eps0[0] / r.precond0_eps0[1]),
        "expected_ratio": float(1 / np.sqrt(1 - cfg.b2)),
        "max_trainable_eta": {
            f"{n}, {w}": _max_trainable_eta(r, o, u)
            for o, n in enumerate(opts)
            for u, w in enumerate(core.WARMUPS)
        },
        "num_diverged": diverged,
        "elapsed_s": float(r.elapsed),
    }


def verdict(results: Results) -> list[str]:
    """Sharpness along warmup, trainable range, catapult search, GI-Adam: ours beside the paper's."""
    r, cfg, s = results, results.config, summary(results)
    kb, out = "Kalra & Barkeshli", []
    for m, (p, name) in enumerate(zip(core.variants(cfg), names(cfg), strict=True)):
        for c in range(len(cfg.traj_c_trgt)):
            lab = _traj_label(cfg, m, c)
            if r.traj_diverged[m, c]:
                out.append(f"{lab}: the trajectory diverged (not counted).")
                continue
            t = _trajectory(r, m, c)
            shape = {"sp": "fell", "mup": "rose"}.get(p, "ended")  # yours: either, not judged
            change = t["max"] if p == "mup" else t["final"]
            ok = {"sp": change < 1, "mup": change > 1.1}.get(p, True)
            ok = ok and 1 <= t["eta_lambda"] <= 4.5
            first = {"sp": "falls on its own", "mup": "rises (progressive sharpening)"}.get(
                p, "SP: falls, muP: rises"
            )
            out.append(kit.compare(
                f"{lab}: sharpness {shape} to {kit.fmt(change)} lambda0, then eta_t lambda_t at "
                "the end", t["eta_lambda"], kb, f"{first}, then lambda_t tracks 2/eta_t: "
                "eta lambda ~ 2 (we accept [1, 4.5])", ok=ok))  # fmt: skip
        zero = r.c_trainable[m, 0]
        out.append(kit.compare(
            f"{name}: largest trainable c_trgt for T_wrm = {cfg.warmup_grid[0]} .. "
            f"{cfg.warmup_grid[-1]}", " -> ".join(kit.fmt(z) for z in zero), kb,
            "longer warmups train larger target rates", ok=bool(zero[-1] > zero[0])))  # fmt: skip
        ratio = float(np.mean(r.eta_init[m] * r.lam0[m] / 2))  # the k = init_search_steps estimate
        out.append(kit.compare(
            f"{name}: catapult-search estimate (k={cfg.init_search_steps}) / (2/lambda0)",
            ratio, "Kalra & Barkeshli 2023", "the loss-catapult threshold, >= 1 (= 1 without "
            "early sharpness reduction)", ok=ratio >= 0.9))  # fmt: skip
    expected, ratio = s["expected_ratio"], s["gi_adam_precond_ratio"]
    out.append(kit.compare("Adam / GI-Adam preconditioned sharpness at init", ratio, kb,
                           f"1/sqrt(1 - b2) = {kit.fmt(expected)}",
                           ok=abs(ratio / expected - 1) < 0.05))  # fmt: skip
    adam, gi = s["max_trainable_eta"]["Adam, constant"], s["max_trainable_eta"]["GI-Adam, constant"]
    out.append(kit.compare("largest trainable eta without warmup, Adam vs GI-Adam",
                           f"{kit.fmt(adam)} vs {kit.fmt(gi)}", kb,
                           "GI-Adam trains at larger rates, like a warmup",
                           ok=gi > adam if max(gi, adam) > 0 else None))  # fmt: skip
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
