"""Critical sharpness beside the sharpness, through progressive sharpening and the edge of stability.

Kalra et al. 2026 (arXiv 2601.16979): the critical sharpness ``lambda_c = 2 / eta_c``, with
``eta_c`` the smallest step along the optimizer's update at which the loss comes back to its
value, needs only forward passes (a bracketing line search), no Hessian products. On a quadratic
and for GD it is ``g^T H g / g^T g``, the curvature along the gradient; once GD is at the edge of
stability the gradient aligns with the top eigenvector, so ``lambda_c`` approaches the sharpness
``lambda_max``. This study trains full-batch GD and heavy-ball momentum on the edge-of-stability
problem (an MLP on the first ``n_train`` digits, MSE; or your own network and data: ``problem``,
``data``, ``problem_args``, docs/own_network.md) and records both, every ``every`` steps:
``lambda_max`` by Lanczos (``lanczos_iters`` Hessian-vector products over the training set) and
``lambda_c`` by :func:`hessian_lab.critical_sharpness` along the optimizer's own next update (at
most ``max_evals`` forward passes, warm-started).

Per run it reports the median ``lambda_c / lambda_max`` once the run is at the edge (the
sharpness has reached the optimizer's threshold and the loss has risen once, the instability
grown; expected within 10% of 1), the same ratio before it, whether
``lambda_c`` rose with ``lambda_max`` during progressive sharpening, and the forward passes
each ``lambda_c`` took. Diverged runs are counted and left out of every statistic.

Example:
  >>> from hessian_lab.studies import critical_sharpness as cs
  >>> r = cs.run(cs.TINY)  # doctest: +SKIP
  >>> r.edge_ratio  # doctest: +SKIP
  array([0.97...])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab import models

from . import critical_sharpness_core as core
from . import critical_sharpness_plots as plots
from . import kit, stats
from . import problems_user as pu
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["check_inputs", "figures", "load", "run", "run_label", "save", "summary", "verdict"]

NAME = "critical_sharpness"
PAPER = "Kalra et al. 2026, arXiv 2601.16979"
DOCS = "docs/studies/critical_sharpness.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf", "linear")
EDGE_TOLERANCE = 0.10  # |median lambda_c / lambda_max - 1| at the edge, the criterion


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob: the problem (the edge-of-stability one), the optimizers, the two measures."""

    problem: str = knob("", pu.PROBLEM_DOC)
    data: str = knob("digits", pu.DATA_DOC)
    problem_args: tuple[str, ...] = knob((), pu.ARGS_DOC)
    n_train: int = knob(500, "first n training examples (the fixed training set)")
    depth: int = knob(2, "hidden layers of the MLP")
    width: int = knob(64, "units per hidden layer")
    activation: Literal["tanh", "relu", "gelu", "silu", "erf", "linear"] = knob(
        "tanh", "hidden activation"
    )
    gd_lrs: tuple[float, ...] = knob((0.2, 0.4), "GD learning rates, one run each (may be empty)")
    momentum_lrs: tuple[float, ...] = knob((0.4,), "heavy-ball learning rates (may be empty)")
    beta: float = knob(0.9, "heavy-ball momentum beta")
    num_steps: int = knob(2500, "training steps per run")
    every: int = knob(10, "measure lambda_max and lambda_c every k steps")
    lanczos_iters: int = knob(20, "Lanczos iterations per lambda_max (>= 2)")
    max_evals: int = knob(8, "forward passes allowed per lambda_c line search (>= 2)")
    alignment_k: int = knob(
        10, "k of the gradient's share in the top-k Hessian eigenspace (Gur-Ari et al.); 0: off"
    )
    alignment_iters: int = knob(30, "Lanczos iterations per alignment measurement (>= k)")
    alignment_every: int = knob(50, "measure the alignment every k steps (a multiple of every)")
    seed: int = knob(0, "initialisation seed, shared by every run")
    divergence_threshold: float = knob(100.0, "a loss above it marks a run diverged")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_ints(self, "n_train", "width", "num_steps", "every")
        kit.check_ints(self, "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "lanczos_iters", "max_evals", minimum=2)
        kit.check_ints(self, "alignment_k", minimum=0)
        kit.check_ints(self, "alignment_every")
        need(self.alignment_every % self.every == 0, self, "alignment_every", "a multiple of every")
        kit.check_ints(self, "alignment_iters", minimum=max(1, self.alignment_k))
        kit.check_seeds(self, "seed")
        pu.check_problem_fields(self, ("depth", "width", "activation"), n_field="n_train")
        kit.check_choice(self, "activation", ACTIVATIONS)
        for f in ("gd_lrs", "momentum_lrs"):
            if getattr(self, f):
                kit.check_rates(self, f)
        need(bool(self.gd_lrs or self.momentum_lrs), self, "gd_lrs", "non-empty, or momentum_lrs")
        need(0 <= self.beta < 1, self, "beta", "a number in [0, 1)")
        kit.check_positive(self, "divergence_threshold")


DEFAULT = Config()
TINY = Config(
    gd_lrs=(0.4,),
    momentum_lrs=(),
    num_steps=600,
    every=10,
    lanczos_iters=12,
    alignment_k=10,
    alignment_iters=20,
    alignment_every=20,
)


def check_inputs(config: Config) -> None:
    """Before any work: the user's problem and data build, ``lanczos_iters`` <= the parameters,
    and the runs fit in memory."""
    c = config
    net = pu.checked_model(c, core.problem, "n_train") or models.mlp(
        64, 10, depth=c.depth, width=c.width, activation=c.activation
    )
    dim = kit.num_params(net)
    kit.check_budget(c, "lanczos_iters", dim, "the number of parameters")
    kit.check_budget(c, "alignment_iters", dim, "the number of parameters")
    kit.check_memory(c, "width", dim, 8 + c.lanczos_iters)


@dataclasses.dataclass
class Results:
    """Curves of P runs (T steps, K measurements every ``config.every`` steps)."""

    config: Any
    optimizers: np.ndarray  # (P,) "gd" or "momentum"
    lrs: np.ndarray  # (P,)
    momenta: np.ndarray  # (P,) beta (0 for GD)
    critical: np.ndarray  # (P,) the optimizer's critical eta * lambda (2 for GD)
    loss: np.ndarray  # (P, T)
    steps: np.ndarray  # (K,) measured steps
    sharpness: np.ndarray  # (P, K) lambda_max (Lanczos)
    critical_sharpness: np.ndarray  # (P, K) lambda_c (line search; NaN where it found none)
    num_evals: np.ndarray  # (P, K) forward passes of each line search
    diverged: np.ndarray  # (P,) bool
    diverged_step: np.ndarray  # (P,) -1 if not diverged
    reach_step: np.ndarray  # (P,) first measured step at the edge (see core.edge_start; -1: never)
    edge_ratio: np.ndarray  # (P,) median lambda_c / lambda_max from reach_step on
    before_ratio: np.ndarray  # (P,) median lambda_c / lambda_max before reach_step
    trend: np.ndarray  # (P,) Spearman correlation of lambda_c with lambda_max before reach_step
    alignment: np.ndarray  # (P, K) share of the gradient in the top-k eigenspace (NaN: off)
    elapsed: np.ndarray  # () seconds


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Train every run with both measures (no I/O); ``progress`` counts training steps."""
    check_inputs(config)
    t0 = time.perf_counter()
    prob = core.problem(config)
    groups = [("gd", config.gd_lrs, 0.0), ("momentum", config.momentum_lrs, config.beta)]
    groups = [(o, lrs, b) for o, lrs, b in groups if len(lrs)]
    counter = kit.StepCounter(sum(len(g[1]) for g in groups) * config.num_steps, progress)
    steps = np.arange(0, config.num_steps, config.every)
    parts, meta = [], []
    for opt_name, lrs, beta in groups:
        res = core.train_group(
            prob, config, opt_name, lrs, beta, counter.part(len(lrs) * config.num_steps)
        )
        parts.append(res)
        meta += [(opt_name, lr, beta, stats.stability_threshold(opt_name, beta)) for lr in lrs]
    counter.finish()
    cat = lambda f: np.concatenate([f(p) for p in parts])  # noqa: E731
    sharp = cat(lambda p: np.asarray(p.metrics["sharpness"])[:, steps])
    crit_s = cat(lambda p: np.asarray(p.metrics["critical_sharpness"])[:, steps])
    evals = cat(lambda p: np.asarray(p.metrics["critical_sharpness_num_evals"])[:, steps])
    diverged = cat(lambda p: np.asarray(p.diverged))
    align = (
        cat(lambda p: np.asarray(p.metrics["alignment"])[:, steps])
        if config.alignment_k
        else np.full(sharp.shape, np.nan)
    )
    opts, lrs_all, betas, crit = (np.asarray(v) for v in zip(*meta, strict=True))
    reach, edge, before, trend = [], [], [], []
    loss = cat(lambda p: np.asarray(p.metrics["loss"]))
    for i in range(lrs_all.size):
        k = -1 if diverged[i] else core.edge_start(sharp[i], loss[i], steps, crit[i] / lrs_all[i])
        ratio = crit_s[i] / sharp[i]
        reach.append(int(steps[k]) if k >= 0 else -1)
        edge.append(float(np.nanmedian(ratio[k:])) if k >= 0 else float("nan"))
        pre = slice(0, k if k >= 0 else len(steps))
        ok = not diverged[i] and np.any(np.isfinite(ratio[pre]))
        before.append(float(np.nanmedian(ratio[pre])) if ok else float("nan"))
        trend.append(core.spearman(crit_s[i][pre], sharp[i][pre]) if not diverged[i] else np.nan)
    return Results(
        config=config,
        optimizers=opts.astype(str),
        lrs=lrs_all.astype(float),
        momenta=betas.astype(float),
        critical=crit.astype(float),
        loss=loss,
        steps=steps,
        sharpness=sharp,
        critical_sharpness=crit_s,
        num_evals=evals,
        diverged=diverged,
        diverged_step=cat(lambda p: np.asarray(p.diverged_step)),
        reach_step=np.asarray(reach, np.int64),
        edge_ratio=np.asarray(edge, float),
        before_ratio=np.asarray(before, float),
        trend=np.asarray(trend, float),
        alignment=align,
        elapsed=np.asarray(time.perf_counter() - t0),
    )


def run_label(results: Results, i: int) -> str:
    """``"GD eta=0.4"`` or ``"heavy ball eta=0.04 beta=0.9"``."""
    return plots.run_label(results.optimizers[i], results.lrs[i], results.momenta[i])


def figures(results: Results) -> dict[str, Figure]:
    """lambda_c beside lambda_max vs step, with each run's threshold, and their ratio."""
    return plots.draw(results, NAME)


METRICS = {
    "reach_step": kit.Metric(
        "first measured step with lambda_max >= threshold (-1: never)", "steps"
    ),
    "edge_ratio": kit.Metric("median lambda_c / lambda_max once at the edge (Kalra et al.: -> 1)"),
    "before_ratio": kit.Metric("median lambda_c / lambda_max before reaching the edge"),
    "trend": kit.Metric("Spearman correlation of lambda_c with lambda_max before the edge"),
    "mean_evals": kit.Metric("forward passes per lambda_c line search, mean", "passes"),
    "lanczos_products": kit.Metric("Hessian-vector products per lambda_max", "products"),
    "alignment_before": kit.Metric(
        "median share of the gradient in the top-k eigenspace before the edge (k = alignment_k)"
    ),
    "alignment_edge": kit.Metric(
        "median share of the gradient in the top-k eigenspace at the edge"
    ),
    "diverged": kit.Metric("the run diverged (left out of every statistic)"),
    "num_diverged": kit.Metric("runs that diverged", "runs"),
    "gd_edge_ratio_median": kit.Metric("median over GD runs at the edge of their edge_ratio"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def summary(results: Results) -> dict[str, Any]:
    """Per run: the ratio at and before the edge, the trend, the line search's cost."""
    r = results
    labels = [run_label(r, i) for i in range(r.lrs.size)]
    per = lambda f: {lab: f(i) for i, lab in enumerate(labels)}  # noqa: E731
    gd_at_edge = [i for i in range(r.lrs.size) if r.optimizers[i] == "gd" and r.reach_step[i] >= 0]
    return {
        "reach_step": per(lambda i: int(r.reach_step[i])),
        "edge_ratio": per(lambda i: float(r.edge_ratio[i])),
        "before_ratio": per(lambda i: float(r.before_ratio[i])),
        "trend": per(lambda i: float(r.trend[i])),
        "mean_evals": per(lambda i: float(np.nanmean(r.num_evals[i]))),
        "alignment_before": per(lambda i: _median(r.alignment[i][r.steps < _edge(r, i)])),
        "alignment_edge": per(lambda i: _median(r.alignment[i][r.steps >= _edge(r, i)])),
        "lanczos_products": int(r.config.lanczos_iters),
        "diverged": per(lambda i: bool(r.diverged[i])),
        "num_diverged": int(np.sum(r.diverged)),
        "gd_edge_ratio_median": float(np.median(r.edge_ratio[gd_at_edge]))
        if gd_at_edge
        else float("nan"),
        "elapsed_s": float(r.elapsed),
    }


def _edge(r: Results, i: int) -> float:
    """The first step at the edge, or +inf where the run never reached it."""
    return float(r.reach_step[i]) if r.reach_step[i] >= 0 else np.inf


def _median(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def verdict(results: Results) -> list[str]:
    """One sentence per run: lambda_c / lambda_max at the edge against Kalra et al.'s ~1."""
    r, out = results, []
    for i in range(r.lrs.size):
        label = run_label(r, i)
        if r.diverged[i]:
            out.append(f"{label}: diverged at step {int(r.diverged_step[i])} (not counted).")
            continue
        cost = (
            f"; each lambda_c took {kit.fmt(np.nanmean(r.num_evals[i]))} forward passes on "
            f"average against {r.config.lanczos_iters} Hessian-vector products per lambda_max"
        )
        if r.reach_step[i] < 0:
            out.append(
                f"{label}: lambda_max never reached its threshold "
                f"{kit.fmt(r.critical[i] / r.lrs[i])}; lambda_c / lambda_max "
                f"{kit.fmt(r.before_ratio[i])} on the median" + cost + "."
            )
            continue
        out.append(
            kit.compare(
                f"{label}: at the edge (from step {int(r.reach_step[i])}), median "
                "lambda_c / lambda_max",
                r.edge_ratio[i],
                "Kalra et al.",
                f"-> 1 (within {EDGE_TOLERANCE:.0%})",
                ok=abs(r.edge_ratio[i] - 1) <= EDGE_TOLERANCE,
            )
            + f"; before it {kit.fmt(r.before_ratio[i])}, rank correlation with lambda_max "
            f"{kit.fmt(r.trend[i])}" + cost + "."
        )
        if r.config.alignment_k:
            s = summary(r)
            label_k = f"{label}: share of the gradient in the top-{r.config.alignment_k} space"
            out.append(
                kit.compare(
                    f"{label_k} at the edge (before it: {kit.fmt(s['alignment_before'][label])})",
                    s["alignment_edge"][label],
                    "Gur-Ari et al. 2018",
                    "most of the gradient (> 0.9) after a short period",
                    ok=s["alignment_edge"][label] > 0.9,
                )
            )
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
