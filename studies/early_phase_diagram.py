"""Reproduce the early-training phase diagram of Kalra & Barkeshli 2023 (arXiv 2302.12250).

Networks of depth ``d`` and width ``w`` (ReLU MLPs, or the Myrtle-style CNN with ``arch="cnn"``)
are trained by full-batch GD for a short, fixed number of steps ``T`` at ``eta = c / lambda0``,
``lambda0`` the sharpness at the seed's initialisation on the training data, for ``c`` on a log2
grid up to divergence and several seeds. ``d`` counts the layers with weights, the readout
included, as the paper does (``depth_convention="layers"``; its ``d = 8`` is 7 hidden layers);
``depth_convention="hidden"`` counts hidden layers. Over steps ``1..T`` (rules as in the paper):

* loss catapult iff ``max_t L_t / L_0 > 1``;
* sharpness catapult iff ``max_t lambda_t / lambda_0 > sharp_threshold`` (1 in the paper; 1.05
  guards against the estimator's noise). ``lambda_t`` is the full-batch sharpness (DEFAULT), or
  with ``sharpness_batch = B`` the paper's measurement: the top eigenvalue on a random batch of
  ``B`` training examples, against ``lambda_0`` on all of them (the paper: 512 against 4096);
* ``c_loss``, ``c_sharp`` = the smallest c with a loss / sharpness catapult;
* ``c_barrier`` = the smallest c for which the loss on the straight line ``theta_0 -> theta_T``
  rises above ``L_0`` (at s = 0.01, 0.02, ..., 1 by default, as the paper samples it);
* ``c_max`` = the largest c that does not diverge (the grid value below the first divergence).

**Your own network.** With ``problem`` (an entry point ``FILE.py:FUNCTION``), ``data`` and
``problem_args`` the cells are your function's values of ``x_arg`` (``x_values``) and, if set,
``y_arg`` (``y_values``), e.g. ``width`` and ``depth``; the built-in net's fields are then unused.

A diverged member counts as all three events (its loss and sharpness blew up) and is left out of
every other statistic. Critical values are computed per seed and averaged over seeds. Expected:
``c_loss <= c_sharp <= c_barrier <= c_max``; ``c_loss ~ 2`` at small ``d/w``, rising above 2
as ``d/w`` grows, where a "sharpness reduction" phase opens (``lambda_T / lambda_0 < 1``
already for ``c < 2``).

Execution: one sweep point per ``(d, w)`` cell; its ``c x seed`` population is trained by one
compiled step (a ``problems.CatapultRunner``, per-member learning rates), built once per cell.

Example:
  >>> from hessian_lab.studies import early_phase_diagram as epd
  >>> r = epd.run(epd.TINY)  # doctest: +SKIP
  >>> epd.critical(r)["c_loss"].shape  # (depths, widths, seeds)  # doctest: +SKIP
  (1, 2, 1)
  >>> epd.cell_label(8, 256)  # the paper's d (layers with weights) and w
  'd=8 w=256'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab.models import ACTIVATIONS

from . import early_phase_diagram_core as core
from . import early_phase_diagram_plots as plots
from . import kit, problems, stats
from . import problems_user as pu
from .early_phase_diagram_core import STORED_DEFAULTS as STORED_DEFAULTS
from .kit import knob, need

__all__ = ["CNN", "CNN_GPU", "CRITICAL", "D8", "DEFAULT", "DOCS", "METRICS", "NAME", "PAPER"]
__all__ += ["PHASE_AXES", "PROBLEM_AXES", "TINY"]
__all__ += ["Config", "Results", "assemble", "c_grid", "cell_label", "check_inputs", "critical"]
__all__ += ["STORED_DEFAULTS", "figures", "load", "paper_depths", "points", "problem"]
__all__ += ["run", "run_point", "runner"]
__all__ += ["save", "summary", "verdict"]

NAME = "early_phase_diagram"
PAPER = "Kalra & Barkeshli 2023, arXiv 2302.12250"
DOCS = "docs/studies/early_phase_diagram.md"
PHASE_AXES = ("widths", "depths")  # phase-diagram's --x and --y
PROBLEM_AXES = ("x_arg", "x_values", "y_arg", "y_values")  # --x NAME=V1,... with --problem
# The built-in net's fields: unused (kept at DEFAULT's or TINY's values) with problem set
NET_FIELDS = ("arch", "depth_convention", "depths", "widths", "param", "activation",
              "normalization")  # fmt: skip
TINY_NET = {"depths": (2,), "widths": (64, 512)}
CRITICAL = ("c_loss", "c_sharp", "c_barrier", "c_max")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the phase-diagram sweep (``c = eta * lambda0`` on a log2 grid)."""

    problem: str = knob("", pu.PROBLEM_DOC)
    data: str = knob("digits", pu.DATA_DOC)
    problem_args: tuple[str, ...] = knob((), pu.ARGS_DOC)
    x_arg: str = knob("width", "with problem: the argument of your function along --x")
    x_values: tuple[int | float, ...] = knob((), "with problem: the values of x_arg, one per cell")
    y_arg: str = knob("", "with problem: a second argument along --y (empty: none)")
    y_values: tuple[int | float, ...] = knob((), "with problem: the values of y_arg")
    arch: Literal["mlp", "cnn"] = knob("mlp", "network: MLP, or the Myrtle-style CNN (no norm)")
    depth_convention: Literal["layers", "hidden"] = knob(
        "layers", "what depths count: layers with weights, readout included (the paper's d), "
        "or hidden (conv) layers"
    )  # fmt: skip
    depths: tuple[int, ...] = knob((2, 5), "depths d, counted as depth_convention says; --y axis")
    widths: tuple[int, ...] = knob((16, 32, 64, 128), "widths w (units or channels); --x axis")
    param: Literal["sp", "ntk", "mup"] = knob("sp", "parameterisation: standard, NTK or muP")
    activation: str = knob("relu", "hidden activation")
    n: int = knob(128, "first n examples of data (full batch)")
    normalization: Literal["per_example", "per_output"] = knob(
        "per_output", "MSE convention: also / outputs (Kalra & Barkeshli), or 1/(2n) sum ||f-y||^2"
    )
    seeds: tuple[int, ...] = knob((0, 1), "initialisation seeds; critical values are averaged")
    log2_c_min: float = knob(0.0, "log2 of the smallest c")
    log2_c_max: float = knob(5.0, "log2 of the largest c")
    num_c: int = knob(16, "values of c (16: spacing 2^(1/3), contains 1, 2, 4, ..., 32)")
    num_steps: int = knob(20, "GD steps T of the early phase")
    sharpness_every: int = knob(1, "measure the sharpness every k steps (divides num_steps)")
    lanczos_iters: int = knob(10, "Lanczos iterations per sharpness measurement")
    lambda0_iters: int = knob(30, "Lanczos iterations for lambda0 at initialisation")
    sharp_threshold: float = knob(
        1.05, "sharpness catapult iff max lambda_t/lambda_0 > this (paper: 1; 1.05 absorbs noise)"
    )
    sharpness_batch: int = knob(
        0, "lambda_t for c_sharp: 0 on all n examples; B > 0 on a fresh random batch of B of them "
        "each step (the paper: B = 512 against a lambda_0 on 4096)"
    )  # fmt: skip
    barrier_points: int = knob(
        100, "points s = 1/P .. 1 of the segment theta_0 -> theta_T for c_barrier (paper: 100)"
    )
    divergence_loss: float = knob(1e4, "a loss above it marks a run diverged")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_choice(self, "arch", ("mlp", "cnn"))
        kit.check_choice(self, "depth_convention", core.DEPTH_CONVENTIONS)
        least = 2 if self.depth_convention == "layers" else 1  # one hidden layer and the readout
        kit.check_int_tuple(self, "depths", minimum=least, maximum=kit.MAX_DEPTH)
        kit.check_int_tuple(self, "widths")
        kit.check_choice(self, "param", ("sp", "ntk", "mup"))
        kit.check_choice(self, "activation", ACTIVATIONS)
        kit.check_ints(self, "n", minimum=2)
        pu.check_problem_fields(self, NET_FIELDS, n_field="n", preset=TINY_NET)
        core.check_axes(self)
        kit.check_choice(self, "normalization", ("per_example", "per_output"))
        kit.check_seeds(self, "seeds")
        need(np.isfinite(self.log2_c_min), self, "log2_c_min", "a finite number")
        need(self.log2_c_max > self.log2_c_min, self, "log2_c_max", "> log2_c_min")
        kit.check_ints(self, "num_c", "lanczos_iters", "lambda0_iters", "barrier_points",
                       minimum=2)  # fmt: skip
        kit.check_ints(self, "num_steps")
        ok = kit.is_int(self.sharpness_every) and self.sharpness_every >= 1
        need(ok and self.num_steps % self.sharpness_every == 0, self, "sharpness_every",
             "an int >= 1 dividing num_steps")  # fmt: skip
        ok = isinstance(self.sharp_threshold, int | float) and self.sharp_threshold >= 1.0
        need(ok and np.isfinite(self.sharp_threshold), self, "sharp_threshold", "a number >= 1")
        kit.check_positive(self, "divergence_loss")
        ok = kit.is_int(self.sharpness_batch) and 0 <= self.sharpness_batch < self.n
        need(ok, self, "sharpness_batch", "0 (all n examples) or an int in [1, n)")

    def hidden(self, depth: int) -> int:
        """Return the builders' depth (hidden or conv layers) of one of ``depths``."""
        return core.hidden_layers(depth, self.depth_convention)


def check_inputs(config: Config) -> None:
    """Before any work: the data load, your problem builds in every cell (its init follows the
    seed if there are several), both Lanczos budgets fit the smallest net (``eval_shape``).
    Raises ValueError naming the field (``problem``, ``data``, ``x_values``, ``seeds``, ...)."""
    core.check_inputs(config, points(config), lambda c, p: problem(c, *_cell(c, p)))


DEFAULT = Config()
TINY = Config(depths=TINY_NET["depths"], widths=TINY_NET["widths"], n=64, seeds=(0,),
              log2_c_min=0.5, log2_c_max=2.75, num_c=10, num_steps=10, lanczos_iters=8,
              lambda0_iters=20)  # fmt: skip
# The paper's d = 8 over its widths, its T = 10 and its c_sharp measurement (lambda_t on batches
# of 1/8 of the set lambda_0 is measured on, as 512 of 4096; rule "> 1"), on 512 digits
D8 = Config(depths=(8,), widths=(256, 512, 1024, 2048), n=512, seeds=(0,), log2_c_min=1.0,
            log2_c_max=4.25, num_c=14, num_steps=10, lambda0_iters=20, sharp_threshold=1.0,
            sharpness_batch=64)  # fmt: skip
# The CNN over width (issue #15): d = 2 (one 3x3 conv layer, average pools, the readout) on 64
# digits as 8x8 images, c on a 2^0.15 grid around 2; minutes on a 2-core CPU
CNN = Config(arch="cnn", depths=(2,), widths=(4, 8, 16, 32, 64), n=64, log2_c_min=0.75,
             log2_c_max=3.0, num_c=16, num_steps=10, lanczos_iters=8, lambda0_iters=20)  # fmt: skip
# ... and deeper and wider, on 512 digits with a 2^0.1 grid and three seeds: for a GPU (not run)
CNN_GPU = dataclasses.replace(
    CNN, depths=(2, 3, 4), widths=(8, 16, 32, 64, 128, 256, 512), n=512, seeds=(0, 1, 2),
    log2_c_min=0.8, log2_c_max=3.5, num_c=28,
)  # fmt: skip


@dataclasses.dataclass
class Results:
    """Arrays over (D depths, W widths, C values of c, S seeds, T + 1 recorded steps).

    With ``problem`` set, ``widths`` holds ``x_values`` and ``depths`` the ``y_values`` (NaN
    without a y axis), as floats.
    """

    config: Any
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
    """One point per (depth, width) cell; with ``problem``, per (y_values, x_values) cell."""
    c = config
    if c.problem:
        ys = [{c.y_arg: y} for y in c.y_values] if c.y_arg else [{}]
        return [{**y, c.x_arg: x} for y in ys for x in c.x_values]
    return [{"depth": int(d), "width": int(w)} for d in c.depths for w in c.widths]


def _cell(config: Config, point: dict) -> tuple[Any, Any]:
    if config.problem:
        return point.get(config.y_arg), point[config.x_arg]
    return int(point["depth"]), int(point["width"])


def problem(config: Config, depth: Any, width: Any) -> problems.Problem:
    """The training problem of one cell, ``depth`` as in ``config.depths`` (built anew on every
    call: hold on to it). With ``problem`` set: your function at ``x_arg = width`` (and
    ``y_arg = depth``)."""
    if config.problem:
        return core.user_cell(config, width, depth)
    return core.builtin_problem(config, config.hidden(depth), width)


def runner(config: Config, prob: problems.Problem) -> problems.CatapultRunner:
    """The compiled population step of one cell; reuse it for other grids of c and seeds.

    ``lambda_t`` on all n examples, or with ``sharpness_batch`` on batches of that size
    (:class:`~hessian_lab.studies.early_phase_diagram_core.BatchSharpnessRunner`).
    """
    names = ("num_steps", "sharpness_every", "lanczos_iters", "lambda0_iters", "barrier_points")
    kw = {k: getattr(config, k) for k in names}
    if config.sharpness_batch:
        return core.BatchSharpnessRunner(prob, sharpness_batch=config.sharpness_batch, **kw)
    return problems.CatapultRunner(prob, **kw)


def _work(config: Config) -> int:
    return config.num_c * len(config.seeds) * (config.num_steps + 1)


def run_point(config: Config, point: dict, *, progress=None) -> dict[str, np.ndarray]:
    """Train one cell's (c, seed) population; arrays shaped (C, S, ...). No I/O."""
    prob = problem(config, *_cell(config, point))
    counter = kit.StepCounter(_work(config), progress)
    runs = runner(config, prob).train(
        c_grid(config),
        config.seeds,
        divergence_threshold=config.divergence_loss,
        progress=counter.part(counter.total),
    )
    counter.finish()
    keys = ("lambda0", "eta", "loss", "sharpness", "line_ratio", "diverged")
    return {k: getattr(runs, k) for k in keys}


def assemble(config: Config, outs: list[dict]) -> Results:
    """Stack the cells' arrays into :class:`Results` (``run`` == assemble over all points)."""
    c = config
    if c.problem:
        depths = np.asarray(c.y_values if c.y_arg else [np.nan], float)
        widths = np.asarray(c.x_values, float)
    else:
        depths, widths = (np.asarray(v, dtype=np.int64) for v in (c.depths, c.widths))

    def stack(k):
        a = np.stack([np.asarray(o[k]) for o in outs])
        return a.reshape(depths.size, widths.size, *a.shape[1:])

    return Results(
        config=config,
        depths=depths,
        widths=widths,
        c=c_grid(config),
        lambda0=stack("lambda0"),
        eta=stack("eta"),
        loss=stack("loss"),
        sharpness=stack("sharpness"),
        line_ratio=stack("line_ratio"),
        diverged=stack("diverged").astype(bool),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run every cell (no I/O); ``progress(done, total)`` counts member-steps of all cells."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    pts = points(config)
    counter = kit.StepCounter(len(pts) * _work(config), progress)
    return assemble(
        config, [run_point(config, p, progress=counter.part(_work(config))) for p in pts]
    )


def critical(results: Results) -> dict[str, np.ndarray]:
    """Per-member flags (D, W, C, S) and per-seed critical values (D, W, S).

    Flags: ``loss_catapult``, ``sharp_catapult``, ``barrier`` (a diverged member counts as all
    three), ``loss_ratio`` (max_t L_t/L_0), ``sharp_ratio`` (max_t lambda_t/lambda_0),
    ``final_ratio`` (lambda_T/lambda_0). Critical values ``c_loss``, ``c_sharp``, ``c_barrier``,
    ``c_max`` (NaN where the grid shows no such c).
    """
    return core.critical(results)


def paper_depths(results: Results) -> np.ndarray:
    """Return the paper's ``d`` (layers with weights, readout included) of ``results.depths``
    (with ``problem`` set: ``depths`` as they are, the values of ``y_arg``)."""
    if results.config.problem:
        return np.asarray(results.depths)
    conv = results.config.depth_convention
    return np.asarray([core.paper_depth(d, conv) for d in results.depths], dtype=np.int64)


def figures(results: Results) -> dict[str, Figure]:
    """The phase diagram in (c, d/w) with critical curves; lambda_T/lambda_0 against c.

    ``d`` is the paper's (layers with weights) whatever ``depth_convention`` the run used. With
    ``problem`` set the vertical axis is ``x_arg``, one set of curves per value of ``y_arg``.
    """
    return plots.draw(results, critical(results), core.plot_axes(results, paper_depths(results)))


def cell_label(depth: int, width: int) -> str:
    """A reader's name for a cell: ``"d=8 w=256"``, ``d`` the paper's (layers with weights)."""
    return f"d={int(depth)} w={int(width)}"


METRICS = {
    "c_loss": kit.Metric("smallest c with a loss catapult (max_t L_t/L_0 > 1), mean over seeds"),
    "c_sharp": kit.Metric(
        "smallest c with a sharpness catapult (lambda_t as sharpness_batch says), mean over seeds"
    ),
    "c_barrier": kit.Metric("smallest c with a loss barrier on theta_0 -> theta_T, seed mean"),
    "c_max": kit.Metric("largest c below the first divergence, mean over seeds"),
    "min_final_ratio_below_2": kit.Metric(
        "smallest lambda_T/lambda_0 over c < 2 and seeds (< 1: sharpness reduction)"
    ),
    "num_barriers": kit.Metric(
        "converging runs with a loss barrier on theta_0 -> theta_T (line above L_0)", "runs"
    ),
    "num_diverged": kit.Metric("runs (c, seed) that diverged: left out of every statistic", "runs"),
    "ordered": kit.Metric("c_loss <= c_sharp <= c_max (seed means) in every cell"),
}


def _cells(results: Results):
    return core.cell_labels(results, paper_depths(results))


def summary(results: Results) -> dict[str, Any]:
    """Per cell: seed-averaged critical values, sharpness reduction, divergences; the ordering."""
    r, cr = results, critical(results)
    out: dict[str, Any] = {k: {} for k in METRICS if k != "ordered"}
    ordered = True
    for i, j, lab in _cells(r):
        for name in CRITICAL:
            out[name][lab] = float(stats.nanmean(cr[name][i, j]))
        cl, cs, cm = (out[k][lab] for k in ("c_loss", "c_sharp", "c_max"))
        ordered &= bool(np.isfinite([cl, cs, cm]).all() and cl <= cs <= cm)
        fr = np.where(r.diverged[i, j], np.nan, cr["final_ratio"][i, j])[r.c < 2]
        fr = fr[np.isfinite(fr)]
        out["min_final_ratio_below_2"][lab] = float(fr.min()) if fr.size else float("nan")
        out["num_diverged"][lab] = int(r.diverged[i, j].sum())
        out["num_barriers"][lab] = int((~r.diverged[i, j] & (r.line_ratio[i, j] > 1)).sum())
    out["ordered"] = ordered
    return out


def verdict(results: Results) -> list[str]:
    """c_loss ~ 2 at small d/w and rising with it, the ordering, and sharpness reduction."""
    r, s, paper = results, summary(results), "Kalra & Barkeshli"
    labs = [lab for _, _, lab in _cells(r)]
    cells = _cells(r)
    out = (core.user_verdict if r.config.problem else core.trend)(s, cells, r, paper_depths(r))
    n = len(labs)
    k = sum(s["c_loss"][x] <= s["c_sharp"][x] <= s["c_max"][x] for x in labs)
    out.append(kit.compare("c_loss <= c_sharp <= c_max (seed means)", f"in {k} of {n} cells",
                           paper, "in every cell", ok=k == n))  # fmt: skip
    k = sum(s["c_barrier"][x] <= s["c_max"][x] for x in labs)
    out.append(kit.compare(f"c_barrier <= c_max ({r.config.barrier_points} points per segment)",
                           f"in {k} of {n} cells", paper, "in every cell", ok=k == n))  # fmt: skip
    if not r.config.problem:
        cells = [(lab, paper_depths(r)[i], r.widths[j]) for i, j, lab in _cells(r)]
        step = (r.config.log2_c_max - r.config.log2_c_min) / (r.config.num_c - 1)
        out += core.against_paper(s, cells, step)
    div = sum(s["num_diverged"].values())
    return [*out, f"{div} of {r.diverged.size} runs diverged: they mark c_max and count as "
            "catapults, and are left out of every other statistic."]  # fmt: skip


save, load = kit.persistence(NAME, Results, core.stored_config(Config, STORED_DEFAULTS), summary)
