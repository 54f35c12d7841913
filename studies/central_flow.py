"""The central flow of GD against GD itself at the edge of stability (Cohen et al. 2024).

Cohen, Damian, Talwalkar, Kolter & Lee, "Understanding Optimization in Deep Learning with Central
Flows", arXiv 2410.24206. At the edge of stability GD oscillates along the top Hessian
eigenvectors; the *central flow* is an ODE for the time average of its trajectory,
``dw/dt = -eta [grad L + 1/2 grad <Sigma, H>]``, with the oscillation's covariance ``Sigma``
chosen (a complementarity problem) so that the sharpness stays at ``2/eta``. It predicts GD's
time-averaged sharpness (``2/eta`` once at the edge) and time-averaged loss
(``L(w) + 1/2 <Sigma, H>``, the loss of the centre plus the oscillation's energy).

This study trains full-batch GD on the edge-of-stability problem (an MLP on the first
``n_train`` digits, MSE, float64) at each learning rate, measuring ``lambda_max`` by Lanczos at
every step, and integrates the central flow (``hessian_lab.gd_central_flow``: Euler steps of
``flow_dt`` GD steps, ``k`` eigenpairs tracked, see its module for the derivation and the
projection that handles the stiffness) from the same initialisation. GD's curves, and the
flow's predicted loss (whose oscillation term chatters step to step), are averaged over
``window`` steps. Per run it reports the mean relative error of the flow's sharpness
against GD's smoothed sharpness, and of the flow's predicted loss against GD's smoothed loss,
over the EoS phase (from GD's first step with ``lambda_max >= 2/eta``), and the same after the
onset (``settle`` steps after GD's loss first rises), when GD's oscillation has grown.

Example:
  >>> from hessian_lab.studies import central_flow as cf
  >>> r = cf.run(cf.TINY)  # doctest: +SKIP
  >>> r.sharpness_error  # doctest: +SKIP
  array([0.02...])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
from matplotlib.figure import Figure

from hessian_lab import models

from . import central_flow_core as core
from . import central_flow_plots as plots
from . import kit
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["assemble", "check_inputs", "figures", "load", "points", "run", "run_point", "save"]
__all__ += ["summary", "verdict"]

NAME = "central_flow"
PAPER = "Cohen et al. 2024, arXiv 2410.24206"
DOCS = "docs/studies/central_flow.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf", "linear")
SHARPNESS_TOLERANCE = 0.05  # the criteria: mean relative error over the EoS phase
LOSS_TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class Config:
    """The problem, the GD runs, the flow's integrator and the comparison."""

    n_train: int = knob(500, "first n digits images (the fixed training set, <= 1797)")
    depth: int = knob(2, "hidden layers of the MLP")
    width: int = knob(64, "units per hidden layer")
    activation: Literal["tanh", "relu", "gelu", "silu", "erf", "linear"] = knob(
        "tanh", "hidden activation"
    )
    lrs: tuple[float, ...] = knob((0.3, 0.4), "GD learning rates eta, one GD run and flow each")
    num_steps: int = knob(1200, "GD steps per run (the flow runs as long, in steps)")
    flow_dt: float = knob(0.5, "Euler step of the flow, in GD steps (flow time eta * dt)")
    k: int = knob(4, "top eigenpairs the flow tracks (more than ever sit at 2/eta at once)")
    lanczos_iters: int = knob(20, "Lanczos iterations per eigen-solve (GD and flow, >= k)")
    sdcp_iters: int = knob(300, "iterations of the complementarity solver per flow step")
    window: int = knob(20, "GD's curves and the flow's predicted loss are averaged over it (even)")
    settle: int = knob(40, "the onset ends this many steps after GD's loss first rises")
    seed: int = knob(0, "initialisation seed, shared by GD and the flow")
    divergence_threshold: float = knob(100.0, "a GD loss above it marks the run diverged")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_ints(self, "n_train", "width", "num_steps", "k", "sdcp_iters", "window")
        kit.check_ints(self, "settle", minimum=0)
        kit.check_ints(self, "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "lanczos_iters", minimum=2)
        kit.check_seeds(self, "seed")
        need(self.n_train <= 1797, self, "n_train", "<= 1797 (the size of digits)")
        kit.check_choice(self, "activation", ACTIVATIONS)
        kit.check_rates(self, "lrs")
        need(len(set(self.lrs)) == len(self.lrs), self, "lrs", "distinct learning rates")
        kit.check_positive(self, "flow_dt", "divergence_threshold")
        need(self.flow_dt <= 1, self, "flow_dt", "<= 1 GD step (Euler is stable to 1/2)")
        need(self.lanczos_iters >= self.k, self, "lanczos_iters", f">= k = {self.k}")
        need(self.window % 2 == 0, self, "window", "even (GD oscillates with period two)")
        need(self.window < self.num_steps, self, "window", "< num_steps")


DEFAULT = Config()
TINY = Config(
    n_train=32, depth=2, width=16, lrs=(0.37,), num_steps=280, k=2, lanczos_iters=8,
    sdcp_iters=50, window=10, settle=20,
)  # fmt: skip


def check_inputs(config: Config) -> None:
    """Before any work: ``lanczos_iters`` <= the parameters, and the runs fit in memory."""
    c = config
    net = models.mlp(64, 10, depth=c.depth, width=c.width, activation=c.activation)
    dim = kit.num_params(net)
    kit.check_budget(c, "lanczos_iters", dim, "the number of parameters")
    kit.check_memory(c, "width", dim, 2 * (12 + c.lanczos_iters + c.k * (c.k + 3)))


@dataclasses.dataclass
class Results:
    """P learning rates; T GD steps; F flow steps (every ``flow_dt`` steps); k eigenvalues."""

    config: Any
    lrs: np.ndarray  # (P,)
    gd_loss: np.ndarray  # (P, T)
    gd_sharpness: np.ndarray  # (P, T) lambda_max at every step
    gd_sharpness_smooth: np.ndarray  # (P, T) averaged over `window` steps (NaN at the ends)
    gd_loss_smooth: np.ndarray  # (P, T)
    flow_loss: np.ndarray  # (P, F) L(w(t))
    flow_predicted_loss: np.ndarray  # (P, F) L + 1/2 <X, M>
    flow_eigenvalues: np.ndarray  # (P, F, k)
    flow_sigma2: np.ndarray  # (P, F) trace X = E|x|^2
    flow_speed: np.ndarray  # (P, F) |dw/dt| / eta
    flow_grad_norm: np.ndarray  # (P, F)
    flow_sharpness_at_steps: np.ndarray  # (P, T) interpolated at GD's steps
    flow_predicted_smooth: np.ndarray  # (P, T) at GD's steps, averaged over `window` steps
    diverged: np.ndarray  # (P,) GD or the flow
    reach_step: np.ndarray  # (P,) GD's first step at 2/eta (-1: never)
    settle_step: np.ndarray  # (P,) end of the onset (-1: none)
    flow_reach_time: np.ndarray  # (P,) the flow's first time (steps) at 2/eta (-1: never)
    sharpness_error: np.ndarray  # (P,) mean |S_flow - S_gd| / S_gd over the EoS phase
    sharpness_error_p90: np.ndarray  # (P,)
    loss_error: np.ndarray  # (P,) the same for the predicted loss
    loss_error_p90: np.ndarray  # (P,)
    sharpness_error_settled: np.ndarray  # (P,) from settle_step on
    loss_error_settled: np.ndarray  # (P,)
    bare_loss_error: np.ndarray  # (P,) L(w(t)) alone against GD's loss (no oscillation term)
    sharpness_mean_error: np.ndarray  # (P,) |mean S_flow / mean S_gd - 1| from settle_step on
    loss_mean_error: np.ndarray  # (P,) the same for the predicted loss against GD's loss
    elapsed: np.ndarray  # () seconds


def points(config: Config) -> list[dict]:
    """One point per learning rate: a GD run and its flow."""
    return [{"lr": float(lr)} for lr in config.lrs]


def _work(config: Config) -> int:
    return config.num_steps + core.flow_steps(config)


def run_point(config: Config, point: dict, *, progress=None) -> dict[str, np.ndarray]:
    """GD and the central flow at one learning rate, raw curves (no I/O); float64."""
    check_inputs(config)
    t0, lr = time.perf_counter(), float(point["lr"])
    counter = kit.StepCounter(_work(config), progress)
    with jax.enable_x64(True):
        out = core.run_lr(
            config,
            lr,
            gd_progress=counter.part(config.num_steps),
            flow_progress=counter.part(core.flow_steps(config)),
        )
    counter.finish()
    return out | {"elapsed": np.asarray(time.perf_counter() - t0)}


def assemble(config: Config, outs: list[dict]) -> Results:
    """Compare each point's GD run with its flow and stack them into :class:`Results`."""
    outs = [o | core.compare(o, config, p["lr"]) for p, o in zip(points(config), outs, strict=True)]
    names = {f.name for f in dataclasses.fields(Results)} - {"config", "lrs", "elapsed"}
    return Results(
        config=config,
        lrs=np.asarray(config.lrs, float),
        elapsed=np.asarray(float(sum(float(o["elapsed"]) for o in outs))),
        **{k: np.stack([np.asarray(o[k]) for o in outs]) for k in sorted(names)},
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Every learning rate (no I/O); ``progress`` counts GD steps plus flow steps."""
    check_inputs(config)
    counter = kit.StepCounter(len(config.lrs) * _work(config), progress)
    outs = [run_point(config, p, progress=counter.part(_work(config))) for p in points(config)]
    counter.finish()
    return assemble(config, outs)


def run_label(results: Results, i: int) -> str:
    """``"GD eta=0.4"``."""
    return f"GD eta={results.lrs[i]:g}"


def figures(results: Results) -> dict[str, Figure]:
    """Sharpness and loss: GD (raw and smoothed) against the flow, per learning rate."""
    return plots.draw(results, NAME)


METRICS = {
    "reach_step": kit.Metric("GD's first step with lambda_max >= 2/eta (-1: never)", "steps"),
    "flow_reach_time": kit.Metric("the flow's first time at 2/eta (-1: never)", "steps"),
    "settle_step": kit.Metric("end of the onset: GD's first loss rise + settle", "steps"),
    "sharpness_error": kit.Metric("mean |S_flow / smoothed S_GD - 1| over the EoS phase"),
    "sharpness_error_p90": kit.Metric("90th percentile of that relative error"),
    "loss_error": kit.Metric("mean |predicted / smoothed GD loss - 1| over the EoS phase"),
    "loss_error_p90": kit.Metric("90th percentile of that relative error"),
    "sharpness_error_settled": kit.Metric("sharpness error from settle_step on"),
    "loss_error_settled": kit.Metric("predicted-loss error from settle_step on"),
    "bare_loss_error": kit.Metric("L(w(t)) alone (no oscillation term) against GD's loss"),
    "sharpness_mean_error": kit.Metric("|mean flow / mean GD sharpness - 1| after the onset"),
    "loss_mean_error": kit.Metric("|mean predicted / mean GD loss - 1| after the onset"),
    "max_sigma2": kit.Metric("largest E|x|^2 = trace X along the flow"),
    "top_k_at_edge": kit.Metric("the k-th tracked eigenvalue reached 2/eta (raise k)"),
    "diverged": kit.Metric("GD or the flow diverged (left out of every statistic)"),
    "num_diverged": kit.Metric("runs that diverged", "runs"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def _kth_at_edge(r: Results, i: int) -> bool:
    return bool(np.nanmax(r.flow_eigenvalues[i, :, -1]) * r.lrs[i] >= 2.0 * (1 - 1e-3))


def summary(results: Results) -> dict[str, Any]:
    """Per run: when GD and the flow reach 2/eta, and the flow's errors against GD."""
    r = results
    labels = [run_label(r, i) for i in range(r.lrs.size)]
    per = lambda f: {lab: f(i) for i, lab in enumerate(labels)}  # noqa: E731
    num = lambda a: per(lambda i: float("nan") if r.diverged[i] else float(a[i]))  # noqa: E731
    return {
        "reach_step": per(lambda i: int(r.reach_step[i])),
        "flow_reach_time": num(r.flow_reach_time),
        "settle_step": per(lambda i: int(r.settle_step[i])),
        "sharpness_error": num(r.sharpness_error),
        "sharpness_error_p90": num(r.sharpness_error_p90),
        "loss_error": num(r.loss_error),
        "loss_error_p90": num(r.loss_error_p90),
        "sharpness_error_settled": num(r.sharpness_error_settled),
        "loss_error_settled": num(r.loss_error_settled),
        "bare_loss_error": num(r.bare_loss_error),
        "sharpness_mean_error": num(r.sharpness_mean_error),
        "loss_mean_error": num(r.loss_mean_error),
        "max_sigma2": num(np.nanmax(r.flow_sigma2, axis=1)),
        "top_k_at_edge": per(lambda i: _kth_at_edge(r, i)),
        "diverged": per(lambda i: bool(r.diverged[i])),
        "num_diverged": int(np.sum(r.diverged)),
        "elapsed_s": float(r.elapsed),
    }


def verdict(results: Results) -> list[str]:
    """Per run: the sharpness and predicted-loss errors over the EoS phase, against a few %."""
    r, out = results, []
    for i in range(r.lrs.size):
        label = run_label(r, i)
        if r.diverged[i]:
            out.append(f"{label}: GD or the flow diverged (not counted).")
            continue
        if r.reach_step[i] < 0:
            out.append(f"{label}: GD never reached 2/eta = {kit.fmt(2 / r.lrs[i])}: no EoS phase.")
            continue
        phase = f"{label}: over the EoS phase (from step {int(r.reach_step[i])})"
        s, loss = r.sharpness_error[i], r.loss_error[i]
        out.append(
            kit.compare(
                f"{phase}, mean |flow sharpness / smoothed GD sharpness - 1|",
                f"{100 * s:.2g}%",
                "Cohen et al.",
                f"a few % (criterion {SHARPNESS_TOLERANCE:.0%})",
                ok=bool(s <= SHARPNESS_TOLERANCE),
            )
            + f"; after the onset (step {int(r.settle_step[i])}) "
            f"{100 * r.sharpness_error_settled[i]:.2g}%."
        )
        out.append(
            kit.compare(
                f"{phase}, mean |predicted loss / smoothed GD loss - 1|",
                f"{100 * loss:.2g}%",
                "Cohen et al.",
                f"a few % (criterion {LOSS_TOLERANCE:.0%})",
                ok=bool(loss <= LOSS_TOLERANCE),
            )
            + f"; after the onset {100 * r.loss_error_settled[i]:.2g}%, and "
            f"{100 * r.loss_mean_error[i]:.2g}% between the two time averages there; the "
            f"flow's own loss L(w(t)) without the oscillation term "
            f"{100 * r.bare_loss_error[i]:.2g}%."
        )
        if _kth_at_edge(r, i):
            out.append(f"{label}: all k = {r.config.k} tracked eigenvalues reached 2/eta: raise k.")
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
