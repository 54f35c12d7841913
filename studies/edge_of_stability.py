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
``arch`` picks a CNN instead of the MLP (``depth`` conv layers of ``width`` channels, with
BatchNorm, LayerNorm or none; or a ResNet with BatchNorm); BatchNorm trains in train mode and
its sharpness is that of the loss GD descends (the full batch's statistics). :data:`CNN_MNIST`
and :data:`CNN_BN_MNIST` run one on real MNIST (``data=mnist:DIR``), :data:`TINY_CNN` on digits.

Per run the study reports the first step with ``lambda >= 2/eta``, whether the sharpness rose
to it (progressive sharpening), the median of ``eta * lambda`` over the rest of the run, and
whether the loss decreased over long windows while rising within most short windows.

The engine is shared with :mod:`hessian_lab.studies.momentum`: :func:`simulate` trains groups
of (optimizer, learning rates, momentum) and measures everything against each optimizer's
critical ``eta * lambda`` (2 for GD). Runs that diverge are counted and left out of every
statistic.

Example:
  >>> from hessian_lab.studies import edge_of_stability as eos
  >>> r = eos.run(eos.TINY)  # doctest: +SKIP
  >>> r.median_x_lr  # doctest: +SKIP
  array([2.0..., 2.0...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab import data as hd
from hessian_lab import models

from . import edge_of_stability_plots as plots
from . import kit, problems
from .edge_of_stability_core import Results as Results
from .edge_of_stability_core import problem as problem
from .edge_of_stability_core import simulate as simulate
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["check_inputs", "cifar_config", "figures", "load", "run", "run_label", "save"]
__all__ += ["simulate", "summary", "verdict"]
__all__ += ["CNN_BN_MNIST", "CNN_MNIST", "CNN_MNIST_GPU", "TINY_CNN"]

NAME = "edge_of_stability"
PAPER = "Cohen et al. 2021, arXiv 2103.00065"
DOCS = "docs/studies/edge_of_stability.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf", "linear")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the study (the problem, the learning rates, the measurement)."""

    cifar_path: str | None = knob(None, "CIFAR-10 directory; None uses sklearn's digits")
    problem: str = knob("", problems.PROBLEM_DOC)
    data: str = knob("digits", problems.DATA_DOC)
    problem_args: tuple[str, ...] = knob((), problems.ARGS_DOC)
    n_train: int = knob(500, "first n training examples (the fixed training set)")
    arch: Literal["mlp", "cnn", "cnn-bn", "cnn-ln", "resnet-bn"] = knob("mlp", problems.ARCH_DOC)
    depth: int = knob(2, "hidden layers of the MLP; conv layers (residual blocks) of a CNN")
    width: int = knob(64, "units per hidden layer; channels of a CNN")
    downsample: int = knob(1, "CNNs: average-pool the images by this factor first")
    activation: Literal["tanh", "relu", "gelu", "silu", "erf", "linear"] = knob(
        "tanh", "hidden activation"
    )
    param: Literal["sp", "ntk", "mup"] = knob("sp", "parameterisation: standard, NTK or muP")
    normalization: Literal["per_example", "per_output"] = knob(
        "per_example", "MSE convention: 1/(2n) sum ||f-y||^2, or also / outputs"
    )
    lrs: tuple[float, ...] = knob((0.2, 0.25, 0.3, 0.4), "learning rates eta, one run each")
    num_steps: int = knob(2500, "GD steps per run")
    sharpness_every: int = knob(20, "measure the sharpness (Lanczos) every k steps")
    lanczos_iters: int = knob(20, "Lanczos iterations per measurement (>= 2)")
    seed: int = knob(0, "initialisation seed, shared by every learning rate")
    flow_step: float = knob(0.025, "gradient-flow baseline: GD with this tiny step ...")
    flow_time: float = knob(300.0, "... up to this time tau = eta t (0 disables the baseline)")
    long_window: int = knob(250, "steps per block for 'the loss decreases over long windows'")
    short_window: int = knob(20, "steps per window for 'the loss is non-monotone over short ones'")
    divergence_threshold: float = knob(100.0, "a loss above it marks a run diverged")

    def __post_init__(self):
        kit.check_finite(self)
        need(self.cifar_path is None or (isinstance(self.cifar_path, str) and self.cifar_path),
             self, "cifar_path", "None or a non-empty path")  # fmt: skip
        kit.check_ints(self, "n_train", "width", "num_steps", "sharpness_every")
        kit.check_ints(self, "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "lanczos_iters", minimum=2)
        kit.check_seeds(self, "seed")
        kit.check_ints(self, "downsample")
        kit.check_choice(self, "arch", problems.ARCHS)
        need(self.arch != "mlp" or self.downsample == 1, self, "downsample", "1 for the MLP")
        need(self.arch != "resnet-bn" or self.param == "sp", self, "param", "sp for resnet-bn")
        problems.check_problem_fields(self, (*problems.MLP_FIELDS, "arch", "downsample"),
                                      n_field="n_train")  # fmt: skip
        kit.check_choice(self, "activation", ACTIVATIONS)
        kit.check_choice(self, "param", ("sp", "ntk", "mup"))
        kit.check_choice(self, "normalization", ("per_example", "per_output"))
        kit.check_rates(self, "lrs")
        kit.check_positive(self, "flow_step", "divergence_threshold")
        kit.check_positive(self, "flow_time", allow_zero=True)
        need(self.flow_time == 0 or self.flow_time >= self.flow_step, self, "flow_time",
             "0 (no baseline) or >= flow_step")  # fmt: skip
        kit.check_ints(self, "long_window", minimum=2)
        need(kit.is_int(self.short_window) and 2 <= self.short_window <= self.long_window,
             self, "short_window", "an int in [2, long_window]")  # fmt: skip


DEFAULT = Config()
TINY = Config(
    lrs=(0.35, 0.4),
    num_steps=700,
    sharpness_every=20,
    lanczos_iters=12,
    flow_step=0.05,
    flow_time=20.0,
    long_window=100,
)
# A CNN on digits (8x8 images), for the tests: one learning rate, 2/eta = 1.2 lambda_0.
TINY_CNN = Config(arch="cnn", n_train=64, width=8, lrs=(0.33,), num_steps=250,
                  sharpness_every=10, lanczos_iters=6, flow_time=0.0, long_window=50)  # fmt: skip
# GD on a CNN on real MNIST (docs/studies/edge_of_stability.md): the first 1000 images of the
# IDX files in data/mnist (the test split: --set data=mnist:DIR?split=... for your own copy),
# pooled to 7x7, conv 2x8 tanh, MSE; minutes per run on a CPU. CNN_BN_MNIST: with BatchNorm.
CNN_MNIST = Config(data="mnist:data/mnist?split=test", n_train=1000, arch="cnn", depth=2,
                   width=8, downsample=4, lrs=(0.14, 0.17, 0.2), num_steps=1500,
                   sharpness_every=20, lanczos_iters=10, flow_time=0.0)  # fmt: skip
CNN_BN_MNIST = dataclasses.replace(CNN_MNIST, arch="cnn-bn")
# The same on 5000 images at 14x14, 16 channels, 4000 steps: for an accelerator.
CNN_MNIST_GPU = dataclasses.replace(CNN_MNIST, n_train=5000, width=16, downsample=2,
                                    num_steps=4000, sharpness_every=10, lanczos_iters=20)  # fmt: skip


def check_inputs(config: Config) -> None:
    """Before any work: CIFAR-10 loads from ``cifar_path``; ``lanczos_iters`` <= the parameters.

    The parameters are counted by ``jax.eval_shape`` (milliseconds). Raises ValueError naming
    the field.
    """
    c = config
    if c.cifar_path is not None:
        kit.check_loads(c, "cifar_path", lambda path: hd.cifar10(path, n=c.n_train))
    net = problems.checked_model(c, problem, "n_train")
    if net is None:  # the built-in digits/CIFAR problem: the MLP counted without its data
        net = problem(c).model if c.arch != "mlp" else models.mlp(
            64 if c.cifar_path is None else 3072, 10, depth=c.depth, width=c.width,
            activation=c.activation, param=c.param)  # fmt: skip
    dim = kit.num_params(net)
    kit.check_budget(c, "lanczos_iters", dim, "the number of parameters")
    kit.check_memory(c, "width", dim * len(c.lrs), 8 + c.lanczos_iters)


def cifar_config(path: str, **overrides) -> Config:
    """Cohen et al.'s setting: the first 5000 CIFAR-10 images, fc-tanh 2 x 200, MSE (per example).

    Learning rates 2/30 ... 2/100-style (``2/eta`` = 30, 45, 60, 80) as in their Figure 1; it
    takes hours on a CPU, so it is never a preset, only used when a path is given.
    """
    kw = dict(
        cifar_path=str(path),
        n_train=5000,
        depth=2,
        width=200,
        activation="tanh",
        lrs=(2 / 80, 2 / 60, 2 / 45, 2 / 30),
        num_steps=5000,
        sharpness_every=50,
        flow_time=0.0,
        long_window=500,
    )
    return Config(**(kw | overrides))


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run full-batch GD at every ``config.lrs`` and the gradient-flow baseline (no I/O)."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    return simulate(config, [("gd", config.lrs, 0.0)], progress=progress)


def run_label(results: Results, i: int) -> str:
    """A reader's name for run ``i``: ``"GD eta=0.2"``, ``"heavy ball eta=0.4 beta=0.9"``."""
    return plots.run_label(results.optimizers[i], results.lrs[i], results.momenta[i])


def figures(results: Results) -> dict[str, Figure]:
    """Loss and sharpness vs steps with the thresholds; sharpness vs time against gradient flow."""
    return plots.draw(results, NAME)


METRICS = {
    "sharpness0": kit.Metric("sharpness at initialisation", "1/lr"),
    "threshold": kit.Metric("the run's stability threshold, critical eta*lambda / eta", "1/lr"),
    "start_step": kit.Metric("statistics start: 0, or below threshold after a catapult", "steps"),
    "reach_step": kit.Metric("first step from there with sharpness >= threshold", "steps"),
    "rose": kit.Metric("the sharpness rose >= 10% before reaching it (progressive sharpening)"),
    "median_x_lr": kit.Metric("median eta*lambda after first reaching the threshold"),
    "median_ratio": kit.Metric("median eta*lambda / critical value (1 = at the edge)"),
    "long_decrease": kit.Metric("after reaching it, the loss still falls over long windows"),
    "short_nonmonotone": kit.Metric("after reaching it, the loss rises within short windows"),
    "diverged": kit.Metric("the run diverged (left out of every statistic)"),
    "final_loss": kit.Metric("training loss at the last step", "loss"),
    "num_diverged": kit.Metric("runs that diverged", "runs"),
    "flow_final_time": kit.Metric("gradient flow: time tau = eta t reached", "time"),
    "flow_final_sharpness": kit.Metric("gradient flow: sharpness at that time", "1/lr"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def summary(results: Results) -> dict[str, Any]:
    """Per run: sharpness at init, first step at the threshold, median eta*lambda, loss pattern."""
    r = results
    labels = [run_label(r, i) for i in range(r.lrs.size)]
    per = lambda f: {lab: f(i) for i, lab in enumerate(labels)}  # noqa: E731
    out: dict[str, Any] = {
        "sharpness0": per(lambda i: float(r.sharpness0[i])),
        "threshold": per(lambda i: float(r.critical[i] / r.lrs[i])),
        "start_step": per(lambda i: int(r.start_step[i])),
        "reach_step": per(lambda i: int(r.reach_step[i])),
        "rose": per(lambda i: bool(r.rose[i])),
        "median_x_lr": per(lambda i: float(r.median_x_lr[i])),
        "median_ratio": per(lambda i: float(r.median_x_lr[i] / r.critical[i])),
        "long_decrease": per(lambda i: bool(r.long_decrease[i])),
        "short_nonmonotone": per(lambda i: bool(r.short_nonmonotone[i])),
        "diverged": per(lambda i: bool(r.diverged[i])),
        "final_loss": per(lambda i: float(r.loss[i, -1])),
        "num_diverged": int(np.sum(r.diverged)),
    }
    if r.flow_time.size:
        out["flow_final_time"] = float(r.flow_time[-1])
        out["flow_final_sharpness"] = float(r.flow_sharpness[-1])
    out["elapsed_s"] = float(r.elapsed)
    return out


def at_the_edge(results: Results, i: int) -> bool:
    """Run ``i`` shows the edge of stability: it sharpened to its threshold, then hovered there.

    Cohen et al.'s criteria: progressive sharpening up to the threshold, then ``eta * lambda``
    within [0.95, 1.1] of the critical value on the median, and a loss that still decreases over
    long windows.
    """
    r = results
    ratio = r.median_x_lr[i] / r.critical[i]
    return bool(not r.diverged[i] and r.rose[i] and 0.95 <= ratio <= 1.1 and r.long_decrease[i])


def verdict(results: Results) -> list[str]:
    """One sentence per run, our median eta*lambda beside the paper's, and the flow baseline."""
    r, out = results, []
    for i in range(r.lrs.size):
        label = run_label(r, i)
        if r.diverged[i]:
            out.append(f"{label}: diverged at step {int(r.diverged_step[i])} (not counted).")
            continue
        if r.reach_step[i] < 0:
            out.append(
                f"{label}: the sharpness never reached its threshold "
                f"{kit.fmt(r.critical[i] / r.lrs[i])} in {r.loss.shape[1]} steps."
            )
            continue
        crit = kit.fmt(r.critical[i])
        rose = f"rose from {kit.fmt(r.sharpness0[i])}"
        if r.start_step[i] > 0:
            rose = (f"started above the threshold at {kit.fmt(r.sharpness0[i])}, fell below it "
                    f"by step {int(r.start_step[i])} (a catapult), rose back")  # fmt: skip
        out.append(
            kit.compare(
                f"{label}: sharpness {rose} to the threshold by step "
                f"{int(r.reach_step[i])}, then median eta*lambda",
                r.median_x_lr[i],
                "Cohen et al.",
                f"~{crit}, hovering at or just above it",
                ok=at_the_edge(r, i),
            )
        )
    if r.flow_time.size:
        lowest = float(np.min(r.critical / r.lrs))
        past = float(np.nanmax(r.flow_sharpness)) > lowest
        out.append(
            f"Gradient flow: sharpness {kit.fmt(r.flow_sharpness[0])} -> "
            f"{kit.fmt(r.flow_sharpness[-1])} by time {kit.fmt(r.flow_time[-1])}, "
            + ("past" if past else "not yet past")
            + f" the lowest GD threshold {kit.fmt(lowest)} (Cohen et al.: the flow keeps sharpening)."
        )
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
