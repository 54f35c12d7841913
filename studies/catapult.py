"""Reproduce the catapult phase of large-learning-rate GD (Lewkowycz et al. 2020, arXiv 2003.02218).

Two families, each trained by full-batch GD at ``eta = c / lambda0``, with ``lambda0`` the
sharpness (top Hessian eigenvalue of the training loss) at the seed's initialisation:

* the two-layer linear network ``f = v . u x / sqrt(n)`` (``models.uv``, NTP) on one example
  ``x = 1`` with target ``y = 0``, loss ``f^2 / 2``;
* wide one-hidden-layer ReLU MLPs (``models.mlp``, NTK parameterisation) on a digits subset;
  or your own network and data (``problem``, ``data``, ``problem_args``, docs/own_network.md),
  one point per value of its ``width`` argument in ``problem_widths`` (or one point as given).

With ``y = 0`` the function-space map of the linear net is exact (``s2 = |x|^2 / n``)::

    f'     = f (1 - eta Theta + eta^2 s2 f^2)
    Theta' = Theta + eta s2 f^2 (eta Theta - 4)

so for ``eta Theta < 2`` the output decays (lazy), for ``2 < eta Theta < 4`` it first grows
(``|1 - eta Theta| > 1``) until ``eta s2 f^2 = O(1)``, which pulls ``Theta`` down until
``eta Theta < 2`` and the run converges in a flatter region (catapult), and for ``eta Theta > 4``
``Theta`` only grows and the run diverges. ``lambda0 = Theta_0 + O(1/n)``, so ``c_loss = 2`` and
``c_max = 4``. The output needs ``~ ln(n) / (2 ln(c - 1))`` steps to reach ``f^2 ~ n``: the
catapult time grows like ``log(width)``.

One population (c grid x seeds, one compiled step, a
:class:`~hessian_lab.studies.problems.CatapultRunner`) per width; the sweep points are
``(family, width)``. Diverged members are counted; they mark ``c_max`` and count as loss
catapults when locating ``c_loss``, and are left out of every other statistic.

Example:
  >>> from hessian_lab.studies import catapult
  >>> r = catapult.run(catapult.TINY)  # doctest: +SKIP
  >>> catapult.summary(r)["c_max_mean"]  # doctest: +SKIP
  {'linear net': 4.0}
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab import models
from hessian_lab import problem as hp
from hessian_lab.models import ACTIVATIONS

from . import catapult_core as core
from . import catapult_plots as plots
from . import kit, problems, stats
from . import problems_user as pu
from .catapult_core import c_grid as c_grid
from .catapult_core import catapult_time_slope as catapult_time_slope
from .catapult_core import critical as critical
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["assemble", "c_grid", "catapult_time_slope", "check_inputs", "critical"]
__all__ += ["family_label", "figures", "load", "points", "run", "run_point", "save", "summary"]
__all__ += ["verdict"]

NAME = "catapult"
PAPER = "Lewkowycz et al. 2020, arXiv 2003.02218"
DOCS = "docs/studies/catapult.md"
FAMILIES = ("uv", "mlp")
# The MLP fields: unused with problem set (the MLP family then trains the user's network).
MLP_FIELDS = ("mlp_widths", "mlp_depth", "mlp_param", "mlp_activation")
TINY_MLP = {"mlp_widths": ()}  # the TINY preset's, accepted beside the defaults with problem


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the catapult study. ``c = eta * lambda0``; c grids are log2-spaced."""

    problem: str = knob("", pu.PROBLEM_DOC + " (in place of the MLP)")
    data: str = knob("digits", pu.DATA_DOC + " (the built-in MLP: digits only)")
    problem_args: tuple[str, ...] = knob((), pu.ARGS_DOC)
    problem_widths: tuple[int, ...] = knob(
        (), "values of your function's `width` argument, one point each (empty: one point)"
    )
    seeds: tuple[int, ...] = knob((0, 1, 2, 3), "linear net: initialisation seeds")
    uv_widths: tuple[int, ...] = knob((64, 256, 1024, 4096), "linear net: widths n, one point each")
    uv_log2_c_min: float = knob(-1.0, "linear net: log2 of the smallest c")
    uv_log2_c_max: float = knob(3.0, "linear net: log2 of the largest c")
    uv_num_c: int = knob(17, "linear net: values of c (17: spacing 2^(1/4), contains 2 and 4)")
    uv_steps: int = knob(200, "linear net: GD steps T (a multiple of sharpness_every)")
    mlp_widths: tuple[int, ...] = knob((256, 1024), "MLP: widths, one point each (may be empty)")
    mlp_seeds: tuple[int, ...] = knob((0, 1), "MLP (or your problem): initialisation seeds")
    mlp_depth: int = knob(1, "MLP: hidden layers")
    mlp_param: Literal["sp", "ntk", "mup"] = knob("ntk", "MLP: parameterisation")
    mlp_activation: str = knob("relu", "MLP: hidden activation")
    mlp_n: int = knob(64, "MLP (or your problem): first n training examples (full batch)")
    mlp_log2_c_min: float = knob(-1.0, "MLP: log2 of the smallest c")
    mlp_log2_c_max: float = knob(4.5, "MLP: log2 of the largest c")
    mlp_num_c: int = knob(23, "MLP: values of c")
    mlp_steps: int = knob(100, "MLP: GD steps T (a multiple of sharpness_every)")
    normalization: Literal["per_example", "per_output"] = knob(
        "per_example", "MSE convention: 1/(2n) sum ||f-y||^2, or also / outputs"
    )
    sharpness_every: int = knob(10, "measure the sharpness (Lanczos) every k steps")
    lanczos_iters: int = knob(10, "Lanczos iterations per sharpness measurement")
    lambda0_iters: int = knob(30, "Lanczos iterations for lambda0 at initialisation")
    divergence_loss: float = knob(1e6, "a loss above it marks a run diverged")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_seeds(self, "seeds", "mlp_seeds")
        kit.check_int_tuple(self, "uv_widths")
        kit.check_int_tuple(self, "mlp_widths", allow_empty=True)
        kit.check_ints(self, "uv_num_c", "mlp_num_c", "mlp_n", "lanczos_iters", "lambda0_iters",
                       minimum=2)  # fmt: skip
        kit.check_ints(self, "sharpness_every")
        kit.check_ints(self, "mlp_depth", maximum=kit.MAX_DEPTH)
        for fam in FAMILIES:
            lo, hi = f"{fam}_log2_c_min", f"{fam}_log2_c_max"
            need(np.isfinite(getattr(self, lo)), self, lo, "a finite number")
            need(getattr(self, hi) > getattr(self, lo), self, hi, f"> {lo}")
            f = f"{fam}_steps"
            ok = kit.is_int(getattr(self, f)) and getattr(self, f) >= 1
            need(ok and getattr(self, f) % self.sharpness_every == 0, self, f,
                 "an int >= 1, a multiple of sharpness_every")  # fmt: skip
        kit.check_choice(self, "mlp_param", ("sp", "ntk", "mup"))
        kit.check_choice(self, "mlp_activation", ACTIVATIONS)
        pu.check_problem_fields(self, MLP_FIELDS, n_field="mlp_n", preset=TINY_MLP)
        kit.check_int_tuple(self, "problem_widths", allow_empty=True)
        kit.check_choice(self, "normalization", ("per_example", "per_output"))
        kit.check_positive(self, "divergence_loss")


def check_inputs(config: Config) -> None:
    """Before any work: the user's problem builds at every width, its init depends on the
    seed (with several ``mlp_seeds``), and both Lanczos budgets fit the smallest net.

    Raises:
      ValueError: ``lanczos_iters`` or ``lambda0_iters`` above the smallest parameter count.
    """
    c = config
    need(bool(c.problem) or c.data.startswith("digits"), c, "data",
         "digits unless problem is set (the built-in MLP trains on digits)")  # fmt: skip
    need(
        bool(c.problem) or not c.problem_widths, c, "problem_widths", "empty unless problem is set"
    )
    need(not c.problem_widths or "width" not in hp.parse_args(c.problem_args), c,
         "problem_widths", "empty when problem_args sets width")  # fmt: skip
    nets = [models.uv(1, w, param="ntp") for w in c.uv_widths]
    if c.problem:
        declared = inspect.signature(hp.load_entry(c.problem)).parameters
        need(not c.problem_widths or "width" in declared, c, "problem_widths",
             f"empty: {c.problem} takes no `width` argument")  # fmt: skip
        for w in c.problem_widths or (0,):
            prob = pu.checked(c, lambda c, w=w: core.user_problem(c, w), "mlp_n")
            pu.check_seeds_vary(prob, c, "mlp_seeds")
            nets.append(prob.model)
    else:
        nets += [models.mlp(64, 10, depth=c.mlp_depth, width=w, activation=c.mlp_activation,
                            param=c.mlp_param) for w in c.mlp_widths]  # fmt: skip
    limit = min(kit.num_params(net) for net in nets)
    for f in ("lanczos_iters", "lambda0_iters"):
        kit.check_budget(c, f, limit, "the parameter count of the smallest net")


DEFAULT = Config()
TINY = Config(seeds=(0, 1), uv_widths=(256,), uv_steps=60, mlp_widths=())


@dataclasses.dataclass
class Results:
    """Arrays (W widths, C values of c, S seeds, T + 1 recorded steps) of both families."""

    config: Any
    uv_widths: np.ndarray  # (W,)
    uv_c: np.ndarray  # (C,)
    uv_lambda0: np.ndarray  # (W, S)
    uv_eta: np.ndarray  # (W, C, S)
    uv_loss: np.ndarray  # (W, C, S, T+1), NaN after divergence
    uv_sharpness: np.ndarray  # (W, C, S, T+1), NaN off cadence
    uv_diverged: np.ndarray  # (W, C, S) bool
    mlp_widths: np.ndarray
    mlp_c: np.ndarray
    mlp_lambda0: np.ndarray
    mlp_eta: np.ndarray
    mlp_loss: np.ndarray
    mlp_sharpness: np.ndarray
    mlp_diverged: np.ndarray


def points(config: Config) -> list[dict]:
    """One point per (family, width): each is one population over (c, seed)."""
    return [{"family": f, "width": int(w)} for f in FAMILIES for w in core.widths(config, f)]


def _work(config: Config, point: dict) -> int:
    fam = point["family"]
    return (
        c_grid(config, fam).size
        * len(core.seeds_of(config, fam))
        * (getattr(config, f"{fam}_steps") + 1)
    )


def run_point(config: Config, point: dict, *, progress=None) -> dict[str, np.ndarray]:
    """Train one (family, width) population; arrays shaped (C, S, ...). No I/O."""
    fam, width = point["family"], int(point["width"])
    if fam == "uv":
        prob = problems.catapult_problem("uv", width=width, normalization=config.normalization)
    elif config.problem:
        prob = core.user_problem(config, width)
    else:
        prob = problems.catapult_problem(
            "mlp",
            width=width,
            depth=config.mlp_depth,
            n=config.mlp_n,
            param=config.mlp_param,
            activation=config.mlp_activation,
            normalization=config.normalization,
        )
    runner = problems.CatapultRunner(
        prob,
        num_steps=getattr(config, f"{fam}_steps"),
        sharpness_every=config.sharpness_every,
        lanczos_iters=config.lanczos_iters,
        lambda0_iters=config.lambda0_iters,
    )
    counter = kit.StepCounter(_work(config, point), progress)
    runs = runner.train(
        c_grid(config, fam),
        core.seeds_of(config, fam),
        divergence_threshold=config.divergence_loss,
        progress=counter.part(counter.total),
    )
    counter.finish()
    keys = ("lambda0", "eta", "loss", "sharpness", "diverged")
    return {k: getattr(runs, k) for k in keys}


def assemble(config: Config, outs: list[dict]) -> Results:
    """Stack the points' arrays into :class:`Results` (``run`` == assemble over all points)."""
    out = {}
    for fam in FAMILIES:
        rs = [o for p, o in zip(points(config), outs, strict=True) if p["family"] == fam]
        C, S = c_grid(config, fam).size, len(core.seeds_of(config, fam))
        T = getattr(config, f"{fam}_steps") + 1

        def stack(k, shape, rs=rs):
            return np.stack([np.asarray(r[k]) for r in rs]) if rs else np.zeros(shape)

        out[f"{fam}_widths"] = np.asarray(core.widths(config, fam), dtype=np.int64)
        out[f"{fam}_c"] = c_grid(config, fam)
        out[f"{fam}_lambda0"] = stack("lambda0", (0, S))
        out[f"{fam}_eta"] = stack("eta", (0, C, S))
        out[f"{fam}_loss"] = stack("loss", (0, C, S, T))
        out[f"{fam}_sharpness"] = stack("sharpness", (0, C, S, T))
        out[f"{fam}_diverged"] = stack("diverged", (0, C, S)).astype(bool)
    return Results(config=config, **out)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run every point (no I/O); ``progress(done, total)`` counts member-steps of all of them."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    pts = points(config)
    counter = kit.StepCounter(sum(_work(config, p) for p in pts), progress)
    outs = [run_point(config, p, progress=counter.part(_work(config, p))) for p in pts]
    return assemble(config, outs)


def family_label(config: Config, family: str) -> str:
    """A reader's name for a family: ``"linear net"``, ``"MLP 1x relu (ntk)"`` or the user's
    problem (``"my_problem.py:make"``)."""
    if family == "uv":
        return "linear net"
    if config.problem:
        return pu.label(config)
    return f"MLP {config.mlp_depth}x {config.mlp_activation} ({config.mlp_param})"


def _families(results: Results) -> list[str]:
    return [f for f in FAMILIES if getattr(results, f"{f}_widths").size]


def figures(results: Results) -> dict[str, Figure]:
    """Loss/sharpness trajectories, the regimes against c, catapult time against width."""
    fams = _families(results)
    labels = {f: family_label(results.config, f) for f in fams}
    return plots.draw(results, {f: critical(results, f) for f in fams}, labels)


METRICS = {
    "c_loss": kit.Metric("smallest c with a loss catapult (max_t L_t/L_0 > 1), mean over seeds"),
    "c_max": kit.Metric("largest c below the first divergence, mean over seeds"),
    "lambda0": kit.Metric("sharpness at initialisation, mean over seeds", "1/lr"),
    "c_loss_mean": kit.Metric("c_loss, mean over every width and seed (theory: 2)"),
    "c_max_mean": kit.Metric(
        "c_max, mean over every width and seed (theory for the linear net: 4)"
    ),
    "catapult_runs": kit.Metric("runs with 2 < c < 4 whose loss catapulted and converged", "runs"),
    "band_runs": kit.Metric("runs with 2 < c < 4 (every width and seed)", "runs"),
    "num_diverged": kit.Metric("runs that diverged (left out of every statistic)", "runs"),
    "catapult_final_x_lr_max": kit.Metric(
        "largest eta*lambda_T over the catapult runs with 2 < c < 4 (theory: < 2)"
    ),
    "catapult_time_slope": kit.Metric(
        "linear net: slope of the loss-peak step vs ln(width)", "steps"
    ),
    "catapult_time_slope_theory": kit.Metric("that slope in theory, 1 / (2 ln(c - 1))", "steps"),
}


def summary(results: Results) -> dict[str, Any]:
    """Per (family, width): c_loss, c_max, lambda0; per family: means, catapult band; slopes."""
    r, out = results, {k: {} for k in METRICS}
    for fam in _families(r):
        cr, c, div = critical(r, fam), getattr(r, f"{fam}_c"), getattr(r, f"{fam}_diverged")
        lab = family_label(r.config, fam)
        for i, w in enumerate(getattr(r, f"{fam}_widths")):
            run = f"{lab} width={w}" if w else lab
            out["c_loss"][run] = float(stats.nanmean(cr["c_loss"][i]))
            out["c_max"][run] = float(stats.nanmean(cr["c_max"][i]))
            out["lambda0"][run] = float(np.mean(getattr(r, f"{fam}_lambda0")[i]))
        out["c_loss_mean"][lab] = float(stats.nanmean(cr["c_loss"]))
        out["c_max_mean"][lab] = float(stats.nanmean(cr["c_max"]))
        band = (c > 2) & (c < 4)
        cat = ((cr["loss_ratio"] > 1) & ~div)[:, band]
        fin = cr["final_x_lr"][:, band][cat]
        out["catapult_runs"][lab] = int(cat.sum())
        out["band_runs"][lab] = int(cat.size)
        out["num_diverged"][lab] = int(div.sum())
        out["catapult_final_x_lr_max"][lab] = float(np.max(fin)) if fin.size else float("nan")
    for c, s in catapult_time_slope(r).items():
        out["catapult_time_slope"][f"c={c:.3g}"] = s
        out["catapult_time_slope_theory"][f"c={c:.3g}"] = float(1 / (2 * np.log(c - 1)))
    return {k: v for k, v in out.items() if v}


def verdict(results: Results) -> list[str]:
    """The linear net's c_loss, c_max, flatter minima and catapult time against the theory."""
    r, out, paper, s = results, [], "Lewkowycz et al.", summary(results)
    for fam in _families(r):
        cr, c, lab = critical(r, fam), getattr(r, f"{fam}_c"), family_label(r.config, fam)
        cl, cm = s["c_loss_mean"][lab], s["c_max_mean"][lab]
        if fam == "uv":
            out.append(kit.compare(f"{lab}: c_loss (mean over widths and seeds)", cl, paper,
                                   "2, within one grid step",
                                   ok=core.within_a_grid_step(cr["c_loss"], c, 2.0)))  # fmt: skip
            out.append(kit.compare(f"{lab}: c_max", cm, paper, "4, within one grid step",
                                   ok=core.within_a_grid_step(cr["c_max"], c, 4.0)))  # fmt: skip
        elif r.config.problem:  # the paper's c_max is for wide ReLU nets: yours is not judged
            out.append(kit.compare(f"{lab}: c_loss", cl, paper, "~2", ok=bool(1.8 <= cl <= 3)))
            out.append(kit.compare(f"{lab}: c_max", cm, paper, "~4 (linear) to ~12 (wide ReLU)",
                                   ok=None))  # fmt: skip
        else:
            out.append(kit.compare(f"{lab}: c_loss", cl, paper, "~2", ok=bool(1.8 <= cl <= 3)))
            out.append(kit.compare(f"{lab}: c_max", cm, paper, "~12 for wide ReLU nets",
                                   ok=bool(cm >= 8)))  # fmt: skip
        if s["num_diverged"][lab]:
            out.append(
                f"{lab}: {s['num_diverged'][lab]} runs diverged (left out of the statistics)."
            )
        if s["band_runs"][lab]:
            fin, n = s["catapult_final_x_lr_max"][lab], s["catapult_runs"][lab]
            out.append(kit.compare(
                f"{lab}: after a catapult (2 < c < 4, {n} of {s['band_runs'][lab]} runs) the "
                "largest eta*lambda_T", fin, paper, "< 2, a flatter region",
                ok=bool(n == s["band_runs"][lab] and fin < 2)))  # fmt: skip
    slopes = catapult_time_slope(r)
    if r.uv_widths.size < 2:
        out.append("Catapult time vs width: needs at least two linear-net widths.")
    for c, s in slopes.items():
        th = 1 / (2 * np.log(c - 1))
        out.append(kit.compare(f"linear net: loss-peak step per ln(width) at c={c:.3g}", s,
                               "theory", f"1/(2 ln(c-1)) = {kit.fmt(th)}",
                               ok=bool(abs(s / th - 1) <= 0.25)))  # fmt: skip
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
