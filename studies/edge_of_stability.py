"""Reproduce the edge of stability of full-batch gradient descent (Cohen et al. 2021).

Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically Occurs at
the Edge of Stability", arXiv 2103.00065. Full-batch GD with step ``eta`` on a fixed training
set: the sharpness ``lambda`` (largest Hessian eigenvalue of the training loss) first rises
("progressive sharpening") until it reaches ``2/eta``, the stability limit of GD on a quadratic,
and then hovers at or just above it, while the loss keeps decreasing over long windows although
it is non-monotone over short ones. Gradient flow (the ``eta -> 0`` limit, integrated here by GD
with a tiny step) on the same model keeps sharpening past every ``2/eta``.

Default problem: an MLP (2 x 64, tanh) on the first 500 sklearn digits (centred, one-hot
targets), MSE ``L = 1/(2n) sum_i ||f(x_i) - y_i||^2`` (Cohen et al.'s normalisation; recorded in
``Config.normalization``), one compiled program for all learning rates. ``cifar_config(path)``
gives Cohen et al.'s setting instead: the first 5000 CIFAR-10 images, fc-tanh 2 x 200, MSE.

Per run the study reports the first step with ``lambda >= 2/eta``, whether the sharpness rose
to it (progressive sharpening), the median of ``eta * lambda`` over the rest of the run, and
whether the loss decreased over long windows while rising within most short windows.

The engine is shared with :mod:`hessian_lab.studies.momentum`: :func:`simulate` trains groups
of (optimizer, learning rates, momentum) and measures everything against each optimizer's
critical ``eta * lambda`` (2 for GD).

Example:
  >>> from hessian_lab.studies import edge_of_stability as eos
  >>> r = eos.run(eos.TINY)  # doctest: +SKIP
  >>> r.median_x_lr  # doctest: +SKIP
  array([2.0..., 2.0...])
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies._results import load_results, save_results

from . import _common as c

__all__ = ["DEFAULT", "NAME", "TINY", "Config", "Results", "cifar_config", "figures", "load"]
__all__ += ["run", "save", "simulate", "summary"]

NAME = "edge_of_stability"


def need(ok: bool, obj: Any, field: str, allowed: str) -> None:
    """Raise ``ValueError`` naming ``field``, its value and what is allowed, unless ``ok``."""
    if not ok:
        raise ValueError(f"{field}: must be {allowed}, got {getattr(obj, field)!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the study (the problem, the learning rates, the measurement)."""

    cifar_path: str | None = None  # None: sklearn digits; else a CIFAR-10 directory
    n_train: int = 500  # first n training examples (the fixed training set)
    depth: int = 2
    width: int = 64
    activation: Literal["tanh", "relu", "gelu", "silu", "erf", "linear"] = "tanh"
    param: Literal["sp", "ntk", "mup"] = "sp"
    normalization: Literal["per_example", "per_output"] = "per_example"  # MSE convention
    lrs: tuple[float, ...] = (0.2, 0.25, 0.3, 0.4)
    num_steps: int = 2500
    sharpness_every: int = 20  # Lanczos every k steps
    lanczos_iters: int = 20
    seed: int = 0  # the same initialisation for every learning rate
    flow_step: float = 0.025  # gradient flow: GD with this tiny step ...
    flow_time: float = 300.0  # ... up to this time tau = eta t (0 disables the baseline)
    long_window: int = 250  # steps per block for "the loss decreases over long windows"
    short_window: int = 20  # steps per window for "the loss is non-monotone over short ones"
    divergence_threshold: float = 100.0  # a loss above it marks a run diverged

    def __post_init__(self):
        need(self.cifar_path is None or (isinstance(self.cifar_path, str) and self.cifar_path),
             self, "cifar_path", "None or a non-empty path")  # fmt: skip
        for f in ("n_train", "depth", "width", "num_steps", "sharpness_every", "lanczos_iters"):
            v = getattr(self, f)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, self, f, "an int >= 1")
        need(self.cifar_path is not None or self.n_train <= 1797, self, "n_train",
             "<= 1797 (the size of digits)")  # fmt: skip
        need(self.activation in ("tanh", "relu", "gelu", "silu", "erf", "linear"), self,
             "activation", "tanh, relu, gelu, silu, erf or linear")  # fmt: skip
        need(self.param in ("sp", "ntk", "mup"), self, "param", "'sp', 'ntk' or 'mup'")
        need(self.normalization in ("per_example", "per_output"), self, "normalization",
             "'per_example' or 'per_output'")  # fmt: skip
        lrs = np.asarray(self.lrs, float)
        need(lrs.ndim == 1 and lrs.size >= 1 and bool(np.all(np.isfinite(lrs) & (lrs > 0))),
             self, "lrs", "a non-empty tuple of positive numbers")  # fmt: skip
        need(self.lanczos_iters >= 2, self, "lanczos_iters", ">= 2")
        need(isinstance(self.seed, int), self, "seed", "an int")
        need(np.isfinite(self.flow_step) and self.flow_step > 0, self, "flow_step", "> 0")
        need(np.isfinite(self.flow_time) and self.flow_time >= 0, self, "flow_time", ">= 0")
        need(self.flow_time == 0 or self.flow_time >= self.flow_step, self, "flow_time",
             "0 (no baseline) or >= flow_step")  # fmt: skip
        need(isinstance(self.long_window, int) and 2 <= self.long_window, self, "long_window",
             "an int >= 2")  # fmt: skip
        need(isinstance(self.short_window, int) and 2 <= self.short_window <= self.long_window,
             self, "short_window", "an int in [2, long_window]")  # fmt: skip
        need(self.divergence_threshold > 0, self, "divergence_threshold", "> 0")


DEFAULT = Config()
TINY = Config(
    lrs=(0.35, 0.4),
    num_steps=700,
    sharpness_every=10,
    lanczos_iters=12,
    flow_step=0.05,
    flow_time=50.0,
    long_window=100,
)


def cifar_config(path: str, **overrides) -> Config:
    """Cohen et al.'s setting: the first 5000 CIFAR-10 images, fc-tanh 2 x 200, MSE (per example).

    Learning rates 2/30 ... 2/100-style (``2/eta`` = 30, 45, 60, 80) as in their Figure 1; it
    takes hours on a CPU, so it is never a preset, only used when a path is given.
    """
    kw = dict(cifar_path=str(path), n_train=5000, depth=2, width=200, activation="tanh",
              lrs=(2 / 80, 2 / 60, 2 / 45, 2 / 30), num_steps=5000, sharpness_every=50,
              flow_time=0.0, long_window=500)  # fmt: skip
    return Config(**(kw | overrides))


@dataclasses.dataclass
class Results:
    """Curves and statistics of P runs (shapes: P runs, T steps, K sharpness measurements)."""

    config: Any
    optimizers: np.ndarray  # (P,) str: "gd", "momentum", "nesterov"
    lrs: np.ndarray  # (P,)
    momenta: np.ndarray  # (P,) beta (0 for GD)
    critical: np.ndarray  # (P,) critical eta * lambda of the optimizer (2 for GD)
    loss: np.ndarray  # (P, T) training loss (NaN after divergence)
    sharp_steps: np.ndarray  # (K,) steps at which the sharpness was measured
    sharpness: np.ndarray  # (P, K)
    diverged: np.ndarray  # (P,) bool
    diverged_step: np.ndarray  # (P,) -1 if not diverged
    sharpness0: np.ndarray  # (P,) sharpness at initialisation
    reach_step: np.ndarray  # (P,) first step with lambda >= critical / eta (-1: never)
    rose: np.ndarray  # (P,) bool: lambda rose to the threshold (progressive sharpening)
    median_x_lr: np.ndarray  # (P,) median eta * lambda from reach_step on
    long_decrease: np.ndarray  # (P,) bool: block means of the loss decrease after reach_step
    short_nonmonotone: np.ndarray  # (P,) bool: the loss rises within most short windows
    flow_time: np.ndarray  # (Kf,) gradient-flow time tau of each flow measurement
    flow_sharpness: np.ndarray  # (Kf,)
    flow_loss: np.ndarray  # (Kf,)
    elapsed: np.ndarray  # () seconds


def problem(config) -> c.Problem:
    """The training problem a config describes (cached; see ``_common.make_problem``)."""
    return c.make_problem(n_train=config.n_train, depth=config.depth, width=config.width,
                          activation=config.activation, param=config.param,
                          normalization=config.normalization,
                          cifar_path=config.cifar_path)  # fmt: skip


def simulate(config, groups, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Train each group ``(optimizer, lrs, momentum)`` on ``config``'s problem; measure EoS.

    One population (one compiled program) per optimizer; the gradient-flow baseline shares the
    GD program. ``config`` needs the fields of :class:`Config`.
    """
    t0 = time.perf_counter()
    prob = problem(config)
    groups = [(o, np.asarray(lrs, float), float(b)) for o, lrs, b in groups if len(lrs)]
    total, done = len(groups) + (config.flow_time > 0), 0
    kw = dict(num_steps=config.num_steps, every=config.sharpness_every,
              num_iters=config.lanczos_iters, seed=config.seed)  # fmt: skip
    parts, meta = [], []
    for opt, lrs, beta in groups:
        mom = None if opt == "gd" else beta
        parts.append(
            c.train_runs(
                prob, opt, lrs, momentum=mom, divergence_threshold=config.divergence_threshold, **kw
            )
        )
        meta += [(opt, lr, beta, c.stability_threshold(opt, beta)) for lr in lrs]
        done += 1
        if progress is not None:
            progress(done, total)
    loss = np.concatenate([p.loss for p in parts])
    sharp = np.concatenate([p.sharpness for p in parts])
    opts, lrs, betas, crit = (np.asarray(v) for v in zip(*meta, strict=True))
    steps = parts[0].steps
    stats = []
    for i in range(lrs.size):
        full = np.full(config.num_steps, np.nan)
        full[steps] = sharp[i]
        stats.append(c.eos_stats(full, loss[i], lrs[i], crit[i], long_window=config.long_window,
                                 short_window=config.short_window))  # fmt: skip
    col = lambda k, dt: np.asarray([s[k] for s in stats], dtype=dt)  # noqa: E731
    ft, fs, fl = np.zeros(0), np.zeros(0), np.zeros(0)
    if config.flow_time > 0:
        flow = c.gradient_flow(prob, time=config.flow_time, step=config.flow_step,
                               every=config.sharpness_every, num_iters=config.lanczos_iters,
                               seed=config.seed)  # fmt: skip
        ft, fs, fl = flow.steps * config.flow_step, flow.sharpness[0], flow.loss[0, flow.steps]
        if progress is not None:
            progress(total, total)
    return Results(
        config=config,
        optimizers=opts.astype(str),
        lrs=lrs.astype(float),
        momenta=betas.astype(float),
        critical=crit.astype(float),
        loss=loss,
        sharp_steps=steps,
        sharpness=sharp,
        diverged=np.concatenate([p.diverged for p in parts]),
        diverged_step=np.concatenate([p.diverged_step for p in parts]),
        sharpness0=col("sharpness0", float),
        reach_step=col("reach_step", np.int64),
        rose=col("rose", bool),
        median_x_lr=col("median_x_lr", float),
        long_decrease=col("long_decrease", bool),
        short_nonmonotone=col("short_nonmonotone", bool),
        flow_time=ft,
        flow_sharpness=fs,
        flow_loss=fl,
        elapsed=np.asarray(time.perf_counter() - t0),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run full-batch GD at every ``config.lrs`` and the gradient-flow baseline (no I/O)."""
    return simulate(config, [("gd", config.lrs, 0.0)], progress=progress)


def figures(results: Results) -> dict[str, Figure]:
    """Loss and sharpness vs steps with the thresholds; sharpness vs time against gradient flow."""
    from ._edge_of_stability_plots import draw

    return draw(results, NAME)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load`` after ``save`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Per run: sharpness at init, first step at the threshold, median eta*lambda, loss pattern."""
    r, out = results, {}
    for i, (o, lr) in enumerate(zip(r.optimizers, r.lrs, strict=True)):
        p = f"{o}_eta{lr:g}" + (f"_beta{r.momenta[i]:g}" if o != "gd" else "")
        out[f"{p}_sharpness0"] = float(r.sharpness0[i])
        out[f"{p}_threshold"] = float(r.critical[i] / lr)
        out[f"{p}_reach_step"] = int(r.reach_step[i])
        out[f"{p}_rose"] = bool(r.rose[i])
        out[f"{p}_median_x_lr"] = float(r.median_x_lr[i])
        out[f"{p}_median_ratio"] = float(r.median_x_lr[i] / r.critical[i])
        out[f"{p}_long_decrease"] = bool(r.long_decrease[i])
        out[f"{p}_short_nonmonotone"] = bool(r.short_nonmonotone[i])
        out[f"{p}_diverged"] = bool(r.diverged[i])
        out[f"{p}_final_loss"] = float(r.loss[i, -1])
    if r.flow_time.size:
        out["flow_final_time"] = float(r.flow_time[-1])
        out["flow_final_sharpness"] = float(r.flow_sharpness[-1])
    out["elapsed_s"] = float(r.elapsed)
    return out
