"""Reproduce how the maximal learning rate scales with the batch size, from mini-batch spectra.

Granziol, Zohren & Roberts 2022 (JMLR 23; arXiv 2006.09092). A mini-batch Hessian ``H_B`` is
the full-data Hessian ``H`` plus a noise matrix whose variance falls like ``1/B`` (``c_B =
(n - B) / (B (n - 1))`` for a uniform ``B``-subset of ``n`` examples). In a spiked random-matrix
model an outlier ``beta`` of ``H`` moves out to ``beta + (P sigma^2 / beta) c_B``: the extreme
eigenvalues of ``H_B`` exceed those of ``H`` by an amount that shrinks as ``B`` grows. The
largest stable learning rate follows: ``2 / lambda_max(H_B)`` grows linearly in ``B`` for SGD
while the noise term dominates; for Adam the paper argues that the preconditioner, built from
the squared batch gradient, shrinks like ``B^-1/2`` there, so Adam's rate grows like
``sqrt(B)``. The study measures both laws and tests the predictions.

For each batch size of a log2 grid from 1 to ``n`` (one sweep point each) the study measures,
at every seed's initialisation of the digits MLP (or CNN): ``lambda_max`` and ``lambda_min``
(smallest algebraic) of ``H_B`` over ``num_batches`` batches by Lanczos, the SLQ density of one
``H_B``, and the top eigenvalue of Adam's ``P^-1/2 H_B P^-1/2``. Predictions:
``eta_SGD(B) = 2 / E[lambda_max(H_B)]`` and ``eta_Adam(B) = ((2 + 2 b1) / (1 - b1)) /
E[lambda_max(P_B^-1/2 H_B P_B^-1/2)]`` with ``P_B = sqrt(E[g_B^2]) + eps``. Measured: one
population per ``B`` and optimizer over a learning-rate grid x seeds; a run is unstable when its
full-data loss rises above ``blowup`` times its initial value (or it diverges) within
``num_steps`` steps, and ``eta*`` is the smallest unstable grid rate. Slopes of ``log eta``
against ``log B`` over ``B <= fit_max_batch``, per seed, with t-intervals over seeds.

Example:
  >>> from hessian_lab.studies import batch_size as bs
  >>> r = bs.run(bs.TINY)  # doctest: +SKIP
  >>> bs.summary(r)["slope_sgd"] > bs.summary(r)["slope_adam"]  # doctest: +SKIP
  True
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from . import batch_size_core as core
from . import batch_size_plots as plots
from . import kit
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["assemble", "check_inputs", "figures", "load", "points", "run", "run_point", "save"]
__all__ += ["slopes", "spike_fits", "summary", "verdict"]

NAME = "batch_size"
PAPER = "Granziol et al. 2022, arXiv 2006.09092"
DOCS = "docs/studies/batch_size.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf")
PAPER_SLOPES = {"sgd": 1.0, "adam": 0.5}  # linear and square-root scaling at small B


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob: the network, the batch sizes, the spectra, the populations, the fits."""

    arch: Literal["mlp", "cnn"] = knob("mlp", "network on the digits: mlp or cnn")
    n_train: int = knob(512, "first n digits images (standardised; <= 1797)")
    depth: int = knob(2, "hidden layers")
    width: int = knob(64, "units (channels for the cnn) per hidden layer")
    activation: Literal["tanh", "relu", "gelu", "silu", "erf"] = knob("tanh", "activation")
    batch_sizes: tuple[int, ...] = knob(
        tuple(2**k for k in range(10)), "increasing batch sizes B <= n_train, one point each"
    )
    seeds: int = knob(4, "seeds (initialisation and shuffling): spectra and runs per seed")
    seed: int = knob(0, "seed of the batches drawn for the spectra and of the probes")
    num_batches: int = knob(16, "mini-batches per B and seed for lambda_max/min(H_B)")
    lanczos_iters: int = knob(20, "Lanczos iterations per extreme eigenvalue (>= 2)")
    slq_iters: int = knob(40, "Lanczos iterations per SLQ probe (densities)")
    slq_probes: int = knob(4, "SLQ probes per density")
    density_points: int = knob(256, "points of each density's grid (>= 2)")
    num_steps: int = knob(200, "training steps per run")
    sgd_lr_range: tuple[float, ...] = knob((2**-5, 2**0.5), "SGD rates tried: (lowest, highest)")
    adam_lr_range: tuple[float, ...] = knob((2**-7, 2**-3), "Adam rates tried: (lowest, highest)")
    grid_per_octave: int = knob(6, "learning rates per factor 2 (log2 grid from the lowest)")
    mode: Literal["auto", "vmap", "loop"] = knob(
        "vmap", "population mode: one vmapped program per B, or members in turn (loop)"
    )
    blowup: float = knob(2.0, "unstable: full-data loss above blowup x its initial value")
    divergence_cap: float = knob(1e4, "a mini-batch loss above it stops a run (unstable)")
    adam_b1: float = knob(0.9, "Adam beta1 (b2 = 0.999)")
    adam_eps: float = knob(1e-8, "Adam epsilon")
    fit_max_batch: int = knob(8, "slopes fit over B <= this (the small-B range)")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_choice(self, "arch", ("mlp", "cnn"))
        kit.check_choice(self, "activation", ACTIVATIONS)
        kit.check_ints(self, "n_train", "width", "seeds", "num_batches", "slq_probes")
        kit.check_ints(self, "num_steps", "grid_per_octave", "fit_max_batch")
        kit.check_ints(self, "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "lanczos_iters", "slq_iters", "density_points", minimum=2)
        kit.check_seeds(self, "seed")
        need(self.n_train <= 1797, self, "n_train", "<= 1797 (the size of digits)")
        kit.check_int_tuple(self, "batch_sizes", maximum=self.n_train)
        b = self.batch_sizes
        need(len(b) >= 2 and list(b) == sorted(b), self, "batch_sizes", "increasing, >= 2 sizes")
        need(sum(x <= self.fit_max_batch for x in b) >= 2, self, "fit_max_batch",
             ">= the second batch size (two points to fit)")  # fmt: skip
        for f in ("sgd_lr_range", "adam_lr_range"):
            kit.check_rates(self, f)
            v = getattr(self, f)
            need(len(v) == 2 and v[0] < v[1], self, f, "(lowest, highest) with lowest < highest")
        kit.check_choice(self, "mode", ("auto", "vmap", "loop"))
        need(self.blowup > 1, self, "blowup", "a number > 1")
        kit.check_positive(self, "divergence_cap", "adam_eps")
        need(0 <= self.adam_b1 < 1, self, "adam_b1", "a number in [0, 1)")


DEFAULT = Config()
TINY = Config(
    n_train=64,
    depth=1,
    width=8,
    batch_sizes=(1, 8),
    seeds=3,
    num_batches=6,
    lanczos_iters=12,
    slq_iters=12,
    slq_probes=2,
    density_points=64,
    num_steps=60,
    sgd_lr_range=(2**-4, 2**1),
    adam_lr_range=(2**-6, 2**0),
    grid_per_octave=2,
    fit_max_batch=8,
)


def check_inputs(config: Config) -> None:
    """Before any work: Lanczos budgets <= the parameters; the per-example gradients fit."""
    c = config
    dim = kit.num_params(core.make_problem(c).model)
    kit.check_budget(c, "lanczos_iters", dim, "the number of parameters")
    kit.check_budget(c, "slq_iters", dim, "the number of parameters")
    kit.check_memory(c, "width", dim, c.n_train + 8 + c.lanczos_iters)


@dataclasses.dataclass
class Results:
    """Arrays of one run: nB batch sizes, S seeds, K batches, G grid rates, M density points."""

    config: Any
    batch_sizes: np.ndarray  # (nB,)
    lmax: np.ndarray  # (nB, S, K) lambda_max(H_B) per batch (at B = n every batch is H)
    lmin: np.ndarray  # (nB, S, K) lambda_min(H_B), smallest algebraic
    lpre: np.ndarray  # (nB, S, K) lambda_max(P^-1/2 H_B P^-1/2), Adam's P at B
    lmax_full: np.ndarray  # (S,) lambda_max(H), the full-data Hessian, per seed
    lmin_full: np.ndarray  # (S,) lambda_min(H)
    pred_sgd: np.ndarray  # (nB, S) 2 / E[lambda_max(H_B)]
    pred_adam: np.ndarray  # (nB, S) adam_threshold(b1) / E[lpre]
    grid_sgd: np.ndarray  # (nB, G) learning rates tried
    grid_adam: np.ndarray  # (nB, G)
    unstable_sgd: np.ndarray  # (nB, G, S) bool
    unstable_adam: np.ndarray  # (nB, G, S) bool
    eta_sgd: np.ndarray  # (nB, S) smallest unstable rate (NaN: off the grid)
    eta_adam: np.ndarray  # (nB, S)
    density_grid: np.ndarray  # (nB, M) SLQ grid of one H_B (seed 0)
    density: np.ndarray  # (nB, M)
    elapsed: np.ndarray  # () seconds


def points(config: Config) -> list[dict]:
    """One point per batch size."""
    return [{"batch_size": int(b)} for b in config.batch_sizes]


def run_point(config: Config, point: dict, *, progress=None, held=None) -> dict[str, np.ndarray]:
    """Run one batch size (no I/O); ``progress`` counts member-steps of its populations.

    ``held``: the problem and spectra program of :func:`batch_size_core.shared`, which
    :func:`run` builds once for all points (a lone point builds its own).
    """
    t0 = time.perf_counter()
    out = core.run_point(config, int(point["batch_size"]), progress=progress, held=held)
    return out | {"seconds": np.asarray(time.perf_counter() - t0)}


def assemble(config: Config, point_results: list[dict]) -> Results:
    """Stack the points into :class:`Results`."""
    stack = lambda k: np.stack([p[k] for p in point_results])  # noqa: E731
    return Results(
        config=config,
        batch_sizes=np.asarray(config.batch_sizes, int),
        **{k: stack(k) for k in ("lmax", "lmin", "lpre", "pred_sgd", "pred_adam")},
        lmax_full=point_results[0]["lmax_full"],
        lmin_full=point_results[0]["lmin_full"],
        **{k: stack(k) for k in ("grid_sgd", "grid_adam")},
        **{k: stack(k) for k in ("unstable_sgd", "unstable_adam", "eta_sgd", "eta_adam")},
        density_grid=stack("density_grid"),
        density=stack("density"),
        elapsed=np.asarray(sum(float(p["seconds"]) for p in point_results)),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run every batch size (no I/O); ``progress(done, total)`` counts member-steps."""
    check_inputs(config)
    pts = points(config)
    counter = kit.StepCounter(len(pts) * core.point_steps(config), progress)
    held = core.shared(config)  # one compiled spectra program for every batch size
    size = core.point_steps(config)
    out = [run_point(config, p, progress=counter.part(size), held=held) for p in pts]
    counter.finish()
    return assemble(config, out)


def _mean_b(a: np.ndarray) -> np.ndarray:
    """Mean over seeds and batches per B, (nB,)."""
    return np.nanmean(a.reshape(a.shape[0], -1), axis=1)


def spike_fits(results: Results) -> dict[str, dict[str, float]]:
    """The spiked fits of the mean ``lambda_max(H_B)`` and ``lambda_min(H_B)`` against ``B``,
    with ``H`` itself as the point ``B = n`` (``c_n = 0``) when the batch sizes stop short."""
    r, n = results, results.config.n_train
    b = r.batch_sizes
    out = {}
    for name in ("lmax", "lmin"):
        v, full = _mean_b(getattr(r, name)), float(np.mean(getattr(r, f"{name}_full")))
        bb, vv = (b, v) if b[-1] == n else (np.append(b, n), np.append(v, full))
        out[name] = core.spike_fit(bb, vv, n)
    return out


def slopes(results: Results) -> dict[str, tuple[float, float, float]]:
    """``{"sgd" | "adam" | "pred_sgd" | "pred_adam": (mean, lo, hi)}``: log-log slopes of eta
    against B over ``B <= fit_max_batch``, per seed, with the 95% t-interval over seeds."""
    r, c = results, results.config
    fit = lambda eta: core.t_interval(  # noqa: E731
        core.loglog_slopes(r.batch_sizes, eta.T, c.fit_max_batch)
    )
    return {
        "sgd": fit(r.eta_sgd),
        "adam": fit(r.eta_adam),
        "pred_sgd": fit(r.pred_sgd),
        "pred_adam": fit(r.pred_adam),
    }


def figures(results: Results) -> dict[str, Figure]:
    """Spectra of H_B against B (extremes, spike fit, densities); eta_max against B."""
    r, n = results, results.config.n_train
    fits = spike_fits(r)
    noise = lambda b: core.batch_noise(b, n)  # noqa: E731  (elementwise on an array of B)
    return plots.draw(r, NAME, fits=fits, noise=noise, slopes=slopes(r))


def _b_label(b: int, n: int) -> str:
    return f"B={b}" + (" (full)" if b == n else "")


METRICS = {
    "slope_sgd": kit.Metric("measured d log eta*_SGD / d log B over the small-B range"),
    "slope_sgd_ci": kit.Metric("95% t-interval over seeds of slope_sgd, 'lo..hi'"),
    "slope_adam": kit.Metric("measured d log eta*_Adam / d log B over the small-B range"),
    "slope_adam_ci": kit.Metric("95% t-interval over seeds of slope_adam, 'lo..hi'"),
    "pred_slope_sgd": kit.Metric("slope of the predicted 2 / E[lambda_max(H_B)]"),
    "pred_slope_adam": kit.Metric("slope of the predicted Adam threshold from P^-1/2 H_B P^-1/2"),
    "lmax_full": kit.Metric("lambda_max(H), full-data Hessian, mean over seeds"),
    "lmin_full": kit.Metric("lambda_min(H), smallest algebraic, mean over seeds"),
    "lmax_batch": kit.Metric("E[lambda_max(H_B)] per B, mean over seeds and batches"),
    "lmin_batch": kit.Metric("E[lambda_min(H_B)] per B, mean over seeds and batches"),
    "spike": kit.Metric("spiked-model fit lambda_max(H_B) = spike + noise c_B: spike"),
    "spike_noise": kit.Metric("the fit's noise coefficient (P sigma^2 / spike)"),
    "spike_r2": kit.Metric("R^2 of the spiked-model fit of lambda_max"),
    "crossover_batch": kit.Metric(
        "B where the fit's noise term equals its spike (c_B = spike/noise)"
    ),
    "spike_min": kit.Metric("the same fit of lambda_min(H_B): its spike"),
    "spike_min_noise": kit.Metric("the lambda_min fit's noise coefficient"),
    "eta_sgd": kit.Metric("measured SGD threshold per B, median over seeds", "lr"),
    "eta_adam": kit.Metric("measured Adam threshold per B, median over seeds", "lr"),
    "pred_sgd": kit.Metric("predicted SGD threshold per B, median over seeds", "lr"),
    "pred_adam": kit.Metric("predicted Adam threshold per B, median over seeds", "lr"),
    "num_off_grid": kit.Metric("thresholds not bracketed by their grid (left out)", "runs"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def summary(results: Results) -> dict[str, Any]:
    """Slopes with intervals, the spike fits, and per-B spectra and thresholds."""
    r, c = results, results.config
    sl = slopes(r)
    labels = [_b_label(int(b), c.n_train) for b in r.batch_sizes]
    per_b = lambda v: {lab: float(x) for lab, x in zip(labels, v, strict=True)}  # noqa: E731
    med = lambda a: per_b([np.nanmedian(row) if np.isfinite(row).any() else np.nan for row in a])  # noqa: E731
    fit, fit_min = spike_fits(r)["lmax"], spike_fits(r)["lmin"]
    ci = lambda s: f"{kit.fmt(s[1])}..{kit.fmt(s[2])}"  # noqa: E731
    return {
        "slope_sgd": sl["sgd"][0],
        "slope_sgd_ci": ci(sl["sgd"]),
        "slope_adam": sl["adam"][0],
        "slope_adam_ci": ci(sl["adam"]),
        "pred_slope_sgd": sl["pred_sgd"][0],
        "pred_slope_adam": sl["pred_adam"][0],
        "lmax_full": float(np.mean(r.lmax_full)),
        "lmin_full": float(np.mean(r.lmin_full)),
        "lmax_batch": per_b(_mean_b(r.lmax)),
        "lmin_batch": per_b(_mean_b(r.lmin)),
        "spike": fit["spike"],
        "spike_noise": fit["noise"],
        "spike_r2": fit["r2"],
        "crossover_batch": core.crossover(fit, c.n_train),
        "spike_min": fit_min["spike"],
        "spike_min_noise": fit_min["noise"],
        "eta_sgd": med(r.eta_sgd),
        "eta_adam": med(r.eta_adam),
        "pred_sgd": med(r.pred_sgd),
        "pred_adam": med(r.pred_adam),
        "num_off_grid": int(np.sum(~np.isfinite(r.eta_sgd)) + np.sum(~np.isfinite(r.eta_adam))),
        "elapsed_s": float(r.elapsed),
    }


def verdict(results: Results) -> list[str]:
    """Sentences: H_B's extremes against H's, the spike fit, the two slopes against 1 and 1/2."""
    r, c = results, results.config
    s, sl = summary(r), slopes(r)
    below = r.batch_sizes < c.n_train
    lm, full = _mean_b(r.lmax)[below], float(np.mean(r.lmax_full))
    out = [
        kit.compare(
            f"E[lambda_max(H_B)] from B={int(r.batch_sizes[0])} to {int(r.batch_sizes[below][-1])}",
            f"{kit.fmt(lm[0])} -> {kit.fmt(lm[-1])}, lambda_max(H) = {kit.fmt(full)}",
            "Granziol et al.",
            "above lambda_max(H), falling with B",
            ok=bool(np.all(lm > full) and np.all(np.diff(lm) < 0)),
        ),
        kit.compare(
            "spiked fit lambda_max(H_B) = spike + noise c_B",
            f"spike {kit.fmt(s['spike'])}, noise {kit.fmt(s['spike_noise'])}, "
            f"R^2 {kit.fmt(s['spike_r2'])}, noise = spike at B = {kit.fmt(s['crossover_batch'])}",
            "Granziol et al.",
            "spike ~ lambda_max(H)",
            ok=abs(s["spike"] - full) <= 0.2 * abs(full) and s["spike_r2"] >= 0.9,
        ),
    ]
    for opt, name in (("sgd", "SGD"), ("adam", "Adam")):
        m, lo, hi = sl[opt]
        p = sl[f"pred_{opt}"][0]
        out.append(
            kit.compare(
                f"{name} slope d log eta*/d log B for B <= {c.fit_max_batch} (95% CI over "
                f"{c.seeds} seeds)",
                f"{kit.fmt(m)} [{kit.fmt(lo)}, {kit.fmt(hi)}]",
                "Granziol et al.",
                f"~{kit.fmt(PAPER_SLOPES[opt])}",
                ok=bool(lo <= PAPER_SLOPES[opt] <= hi) if np.isfinite(m) else None,
            )
            + f"; predicted from the spectra {kit.fmt(p)}."
        )
    out.append(
        kit.compare(
            "SGD slope above Adam slope",
            f"{kit.fmt(sl['sgd'][0])} vs {kit.fmt(sl['adam'][0])}",
            "Granziol et al.",
            "1 vs 1/2",
            ok=bool(sl["sgd"][0] > sl["adam"][0]),
        )
    )
    if s["num_off_grid"]:
        out.append(f"{s['num_off_grid']} thresholds fell off their grid and are left out.")
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
