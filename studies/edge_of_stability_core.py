"""The engine of :mod:`hessian_lab.studies.edge_of_stability`: its problem, training and statistics.

:func:`simulate` trains groups of (optimizer, learning rates, momentum) on one problem, each
optimizer through one compiled :class:`~hessian_lab.studies.problems.SharpnessRunner`, and
measures the edge of stability against each optimizer's critical ``eta * lambda`` (2 for GD,
Cohen et al. 2021, arXiv 2103.00065). :mod:`hessian_lab.studies.momentum` reuses it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import kit, problems, stats

__all__ = ["Results", "catapult_end", "problem", "simulate"]


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
    start_step: np.ndarray  # (P,) where the statistics start: 0, or after an initial catapult
    reach_step: np.ndarray  # (P,) first step from start_step with lambda >= critical / eta
    rose: np.ndarray  # (P,) bool: lambda rose to the threshold (progressive sharpening)
    median_x_lr: np.ndarray  # (P,) median eta * lambda from reach_step on (NaN if diverged)
    long_decrease: np.ndarray  # (P,) bool: block means of the loss decrease after reach_step
    short_nonmonotone: np.ndarray  # (P,) bool: the loss rises within most short windows
    flow_time: np.ndarray  # (Kf,) gradient-flow time tau of each flow measurement
    flow_sharpness: np.ndarray  # (Kf,)
    flow_loss: np.ndarray  # (Kf,)
    elapsed: np.ndarray  # () seconds


def problem(config) -> problems.Problem:
    """The training problem a config describes: the user's ``problem``, or the built-in network.

    The built-in one is ``config.arch`` (an MLP, or a CNN with ``depth`` conv layers of
    ``width`` channels, optionally BatchNorm or LayerNorm) on ``data``, MSE; a Config without
    ``arch`` (an older one, or another study's) gets the MLP. The user's model may hold state
    (BatchNorm statistics): the SharpnessRunner threads it.
    """
    if config.problem:
        return problems.user_problem_of(config, config.n_train, stateful=True)
    return problems.make_problem(
        n_train=config.n_train,
        depth=config.depth,
        width=config.width,
        activation=config.activation,
        param=config.param,
        normalization=config.normalization,
        cifar_path=config.cifar_path,
        data=config.data,
        arch=getattr(config, "arch", "mlp"),
        downsample=getattr(config, "downsample", 1),
    )


def simulate(config, groups, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Train each group ``(optimizer, lrs, momentum)`` on ``config``'s problem; measure EoS.

    One compiled program per optimizer (a :class:`~hessian_lab.studies.problems.SharpnessRunner`);
    the gradient-flow baseline reuses the GD one. ``progress(done, total)`` counts training steps
    (members x steps, plus the flow's). ``config`` needs the fields of :class:`Config`.
    """
    t0 = time.perf_counter()
    prob = problem(config)
    groups = [(o, np.asarray(lrs, float), float(b)) for o, lrs, b in groups if len(lrs)]
    n_flow = problems.flow_steps(config.flow_time, config.flow_step) if config.flow_time else 0
    counter = kit.StepCounter(sum(g[1].size for g in groups) * config.num_steps + n_flow, progress)
    runners: dict[str, problems.SharpnessRunner] = {}

    def runner(opt: str) -> problems.SharpnessRunner:
        if opt not in runners:
            runners[opt] = problems.SharpnessRunner(
                prob, opt, every=config.sharpness_every, num_iters=config.lanczos_iters
            )
        return runners[opt]

    parts, meta = [], []
    for opt, lrs, beta in groups:
        parts.append(
            runner(opt).train(
                lrs,
                num_steps=config.num_steps,
                seed=config.seed,
                momentum=None if opt == "gd" else beta,
                divergence_threshold=config.divergence_threshold,
                progress=counter.part(lrs.size * config.num_steps),
            )
        )
        meta += [(opt, lr, beta, stats.stability_threshold(opt, beta)) for lr in lrs]
    ft, fs, fl = np.zeros(0), np.zeros(0), np.zeros(0)
    if n_flow:
        flow = runner("gd").flow(
            time=config.flow_time,
            step=config.flow_step,
            seed=config.seed,
            progress=counter.part(n_flow),
        )
        ft, fs, fl = flow.steps * config.flow_step, flow.sharpness[0], flow.loss[0, flow.steps]
    counter.finish()
    loss = np.concatenate([p.loss for p in parts])
    sharp = np.concatenate([p.sharpness for p in parts])
    diverged = np.concatenate([p.diverged for p in parts])
    opts, lrs, betas, crit = (np.asarray(v) for v in zip(*meta, strict=True))
    steps = parts[0].steps
    per_run = []
    for i in range(lrs.size):
        full = np.full(config.num_steps, np.nan)
        full[steps] = sharp[i]
        start = catapult_end(full, crit[i] / lrs[i])
        s = stats.eos_stats(
            np.where(np.arange(full.size) < start, np.nan, full),
            loss[i],
            lrs[i],
            crit[i],
            long_window=config.long_window,
            short_window=config.short_window,
        )
        if diverged[i]:  # a diverged run has no edge of stability to report
            s |= {"median_x_lr": float("nan"), "long_decrease": False, "short_nonmonotone": False}
        per_run.append(s | {"start_step": start, "sharpness0": float(sharp[i, 0])})
    col = lambda k, dt: np.asarray([s[k] for s in per_run], dtype=dt)  # noqa: E731
    return Results(
        config=config,
        optimizers=opts.astype(str),
        lrs=lrs.astype(float),
        momenta=betas.astype(float),
        critical=crit.astype(float),
        loss=loss,
        sharp_steps=steps,
        sharpness=sharp,
        diverged=diverged,
        diverged_step=np.concatenate([p.diverged_step for p in parts]),
        sharpness0=col("sharpness0", float),
        start_step=col("start_step", np.int64),
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


def catapult_end(sharpness: np.ndarray, threshold: float) -> int:
    """The first step with the sharpness below ``threshold`` if it starts above it, else 0.

    A run that starts above its threshold (BatchNorm in standard parameterisation: lambda_0 is
    several times 2/eta) first catapults: the loss spikes and the sharpness falls below the
    threshold (Lewkowycz et al. 2020, arXiv 2003.02218). Progressive sharpening and the edge of
    stability are measured from there on. A run that never gets below its threshold returns
    the length of ``sharpness`` (nothing left to measure). NaN entries are skipped.
    """
    lam = np.asarray(sharpness, float)
    ok = np.flatnonzero(np.isfinite(lam))
    if ok.size == 0 or lam[ok[0]] < threshold:
        return 0
    below = ok[lam[ok] < threshold]
    return int(below[0]) if below.size else lam.size
