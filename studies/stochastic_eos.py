"""Reproduce the stochastic edge of stability: SGD's instability is set by tr(NTK) / B.

Agarwala & Pennington 2024 (arXiv 2404.19261). Two parts:

* **Linear regression** (where the theory is sharp): ``f(x) = w . x``, MSE
  ``L = (1/2n) sum_i (w . x_i - y_i)^2``, Gaussian inputs ``x ~ N(0, I_d / d)``, realisable
  targets. For each batch size ``B`` a vmapped population over a log grid of learning rates and
  seeds (one compile per ``B``) finds the smallest ``eta`` whose minibatch loss blows up
  (``> blowup * L_0``) within ``lin_steps`` steps; the median over seeds is compared with
  ``2B / tr(NTK)``, ``2 / lambda_max``, the noise-kernel criterion and the exact second-moment
  threshold (:func:`noise_kernel_threshold`, :func:`second_moment_threshold`).
* **MLP on digits**: SGD at several batch sizes and one learning rate; sharpness (full training
  set, Lanczos) and the NTK trace are tracked ("conservative sharpening": sharpness grows more
  slowly at small batch; the NTK trace settles where ``eta c_B tr(NTK) / 2 ~ 1``). Or your own
  network and data in its place (``problem``, ``data``, ``problem_args``, docs/own_network.md):
  the same curves, without the noise kernel (its normalisation is the digits MLP's MSE).

The NTK is normalised like the loss: ``K = J J^T / n`` for the per-example MSE (its non-zero
eigenvalues are those of the Gauss-Newton ``J^T J / n``), ``J J^T / (n o)`` for the per-output
MSE. The trainer shuffles once per epoch (no replacement within an epoch), so a step's batch is a
uniform ``B``-subset and the batch-gradient noise carries ``c_B = (n - B) / (B (n - 1))``
(``~ 1/B - 1/n``). See docs/studies/stochastic_eos.md for the derivations. The numerics live in
:mod:`hessian_lab.studies.stochastic_eos_core`; MLP members that diverge are counted and left
out of every statistic.

Example:
  >>> from hessian_lab.studies import stochastic_eos as se
  >>> r = se.run(se.TINY)  # doctest: +SKIP
  >>> se.summary(r)["lin_ratio_trace"]["B=1"]  # doctest: +SKIP
  1.09...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from matplotlib.figure import Figure

from . import kit, stats
from . import problems_user as pu
from . import stochastic_eos_core as core
from . import stochastic_eos_plots as plots
from .kit import knob, need
from .stochastic_eos_core import mlp_curves as mlp_curves
from .stochastic_eos_core import noise_kernel_threshold as noise_kernel_threshold
from .stochastic_eos_core import second_moment_threshold as second_moment_threshold

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["assemble", "check_inputs", "figures", "load", "mlp_curves"]
__all__ += ["noise_kernel_threshold", "points", "run", "run_point", "save"]
__all__ += ["second_moment_threshold", "summary", "verdict"]

NAME = "stochastic_eos"
PAPER = "Agarwala & Pennington 2024, arXiv 2404.19261"
DOCS = "docs/studies/stochastic_eos.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob: the linear-regression sweep (``lin_*``, ``grid_*``) and the MLP (``mlp_*``)."""

    problem: str = knob("", pu.PROBLEM_DOC + " (in place of the MLP)")
    data: str = knob("digits", pu.DATA_DOC + " (the built-in MLP: digits only)")
    problem_args: tuple[str, ...] = knob((), pu.ARGS_DOC)
    normalization: Literal["per_example", "per_output"] = knob(
        "per_example", "MSE convention: 1/(2n) sum ||f-y||^2, or also / outputs"
    )
    seed: int = knob(0, "seed of the linear problem's inputs and teacher")
    lin_n: int = knob(256, "linear regression: training examples n")
    lin_dim: int = knob(64, "linear regression: input dimension d")
    lin_batch_sizes: tuple[int, ...] = knob(
        (1, 2, 4, 8, 16, 32, 64, 256), "linear regression: batch sizes B, one sweep point each"
    )
    lin_seeds: int = knob(3, "linear regression: seeds (shuffling) per learning rate")
    lin_steps: int = knob(3000, "linear regression: SGD steps per run")
    grid_lo: float = knob(-1.0, "log2 of the grid's low end / min(2B/tr K, 2/lambda_max)")
    grid_hi: float = knob(1.5, "log2 of the grid's high end / the same reference")
    grid_per_octave: int = knob(8, "learning rates per factor 2 of the grid")
    blowup: float = knob(1000.0, "a run diverged when its minibatch loss exceeds blowup x L_0")
    mlp_n: int = knob(256, "MLP (or your problem): training examples")
    mlp_depth: int = knob(2, "MLP: hidden layers")
    mlp_width: int = knob(64, "MLP: units per hidden layer")
    mlp_activation: Literal["tanh", "relu", "gelu", "silu", "erf"] = knob(
        "tanh", "MLP: hidden activation"
    )
    mlp_lr: float = knob(0.15, "MLP: the one SGD learning rate")
    mlp_batch_sizes: tuple[int, ...] = knob(
        (1, 4, 32, 256), "MLP: batch sizes, one point each (mlp_n: GD; empty: no MLP part)"
    )
    mlp_seeds: int = knob(1, "MLP: seeds per batch size")
    mlp_steps: int = knob(1200, "MLP: SGD steps per run")
    every: int = knob(50, "MLP: measure sharpness and NTK trace every k steps")
    batch_sharpness_every: int = knob(
        5, "MLP: batch sharpness g_B'H_B g_B/|g_B|^2 of the step's batch every k steps"
    )
    num_iters: int = knob(20, "MLP: Lanczos iterations per sharpness measurement")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_choice(self, "normalization", ("per_example", "per_output"))
        kit.check_ints(self, "lin_n", "lin_dim", "lin_seeds", "lin_steps", "grid_per_octave")
        kit.check_ints(self, "mlp_n", "mlp_width", "mlp_seeds", "mlp_steps", "every", "num_iters")
        kit.check_ints(self, "batch_sharpness_every")
        kit.check_ints(self, "mlp_depth", minimum=0, maximum=kit.MAX_DEPTH)
        kit.check_seeds(self, "seed")
        for f, n, empty in (
            ("lin_batch_sizes", self.lin_n, False),
            ("mlp_batch_sizes", self.mlp_n, True),
        ):
            v = getattr(self, f)
            ok = isinstance(v, tuple) and (empty or len(v) >= 1)
            ok = ok and all(kit.is_int(b) and 1 <= b <= n for b in v)
            need(ok, self, f, f"a {'' if empty else 'non-empty '}tuple of ints in [1, {n}]")
        need(self.grid_hi > self.grid_lo, self, "grid_hi", "> grid_lo")
        need(np.isfinite(self.blowup) and self.blowup > 1, self, "blowup", "a number > 1")
        kit.check_positive(self, "mlp_lr")
        kit.check_choice(self, "mlp_activation", ACTIVATIONS)
        need(self.every <= self.mlp_steps, self, "every", "<= mlp_steps")
        need(self.batch_sharpness_every <= self.every, self, "batch_sharpness_every", "<= every")
        pu.check_problem_fields(self, core.MLP_FIELDS, n_field="mlp_n")


def check_inputs(config: Config) -> None:
    """Before any work: with an MLP part, ``num_iters`` is at most the MLP's parameter count;
    ``problem`` comes with ``mlp_batch_sizes``, builds, has at least ``max(mlp_batch_sizes)``
    examples, and its init depends on the seed (with several ``mlp_seeds``); the built-in MLP
    takes digits only. Cross-field checks live here, not in the Config, so that the order of
    ``--set`` options does not matter.

    Raises:
      ValueError: naming the field.
    """
    core.check_mlp(config)


DEFAULT = Config()
TINY = Config(
    lin_batch_sizes=(1,),
    lin_seeds=2,
    lin_steps=1500,
    grid_lo=-0.5,
    grid_hi=0.75,
    mlp_batch_sizes=(),
)


@dataclasses.dataclass
class Results:
    """Arrays of one run (L linear batch sizes, G grid, S seeds, M MLP batch sizes, K records)."""

    config: Any
    lin_batch_sizes: np.ndarray  # (L,)
    lin_spectrum: np.ndarray  # (d,) eigenvalues of the NTK (= of H), ascending
    lin_trace: np.ndarray  # () tr(NTK) normalised like the loss
    lin_lmax: np.ndarray  # () lambda_max(H) = sharpness
    lin_grid: np.ndarray  # (L, G) learning rates swept
    lin_diverged: np.ndarray  # (L, G, S) bool
    lin_diverged_step: np.ndarray  # (L, G, S) int, -1 if not diverged
    lin_eta_div: np.ndarray  # (L, S) smallest diverging eta (NaN: none on the grid)
    lin_pred_trace: np.ndarray  # (L,) 2B / tr(NTK)
    lin_pred_kernel: np.ndarray  # (L,) noise-kernel criterion K(eta) = 1
    lin_pred_exact: np.ndarray  # (L,) second-moment threshold (exact for the marginal batch law)
    mlp_batch_sizes: np.ndarray  # (M,)
    mlp_record_steps: np.ndarray  # (K,) steps at which curvature was measured
    mlp_sharpness: np.ndarray  # (M, S', K)
    mlp_ntk_trace: np.ndarray  # (M, S', K) tr(NTK) normalised like the loss
    mlp_full_loss: np.ndarray  # (M, S', K) training loss on all mlp_n examples
    mlp_batch_sharpness: np.ndarray  # (M, S', K) batch sharpness, mean over the window of a record
    mlp_diverged: np.ndarray  # (M, S') bool
    elapsed: np.ndarray  # () seconds


def points(config: Config) -> list[dict]:
    """One point per linear batch size, then one per MLP batch size (deterministic order)."""
    return [{"part": "linear", "batch_size": b} for b in config.lin_batch_sizes] + [
        {"part": "mlp", "batch_size": b} for b in config.mlp_batch_sizes
    ]


def run_point(config: Config, point: dict, *, progress=None) -> dict[str, np.ndarray]:
    """Run one batch size of one part (no I/O; one compiled step per point).

    ``progress(done, total)`` counts member-steps (``stochastic_eos_core.point_steps``).
    """
    t0 = time.perf_counter()
    fn = core.lin_point if point["part"] == "linear" else core.mlp_point
    out = fn(config, int(point["batch_size"]), progress=progress)
    return out | {"seconds": np.asarray(time.perf_counter() - t0)}


def assemble(config: Config, point_results: list[dict]) -> Results:
    """Stack the points' arrays into :class:`Results`."""
    nl = len(config.lin_batch_sizes)
    lin, mlp = point_results[:nl], point_results[nl:]
    bs = np.asarray(config.lin_batch_sizes)
    spec = lin[0]["spectrum"]
    trace = float(spec.sum())
    k = np.arange(0, config.mlp_steps, config.every)
    empty = np.zeros((0, config.mlp_seeds, k.size))
    stack = lambda key: np.stack([p[key] for p in mlp]) if mlp else empty  # noqa: E731
    lin_stack = lambda key: np.stack([p[key] for p in lin])  # noqa: E731
    return Results(
        config=config,
        lin_batch_sizes=bs,
        lin_spectrum=spec,
        lin_trace=np.asarray(trace),
        lin_lmax=np.asarray(spec[-1]),
        lin_grid=lin_stack("grid"),
        lin_diverged=lin_stack("diverged"),
        lin_diverged_step=lin_stack("diverged_step"),
        lin_eta_div=lin_stack("eta_div"),
        lin_pred_trace=2.0 * bs / trace,
        lin_pred_kernel=lin_stack("pred_kernel"),
        lin_pred_exact=lin_stack("pred_exact"),
        mlp_batch_sizes=np.asarray(config.mlp_batch_sizes, int),
        mlp_record_steps=k,
        mlp_sharpness=stack("sharpness"),
        mlp_ntk_trace=stack("ntk_trace"),
        mlp_full_loss=stack("full_loss"),
        mlp_batch_sharpness=stack("batch_sharpness"),
        mlp_diverged=np.stack([p["diverged"] for p in mlp])
        if mlp
        else np.zeros((0, config.mlp_seeds), bool),
        elapsed=np.asarray(sum(float(p["seconds"]) for p in point_results)),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O); ``progress(done, total)`` counts member-steps."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    pts = points(config)
    counter = kit.StepCounter(sum(core.point_steps(config, p) for p in pts), progress)
    out = [run_point(config, p, progress=counter.part(core.point_steps(config, p))) for p in pts]
    counter.finish()
    return assemble(config, out)


def _label(b: int, n: int) -> str:
    return f"B={b}" + (" (GD)" if b == n else "")


METRICS = {
    "lin_trace_ntk": kit.Metric("linear regression: tr(NTK), normalised like the loss", "1/lr"),
    "lin_lmax": kit.Metric("linear regression: sharpness lambda_max(H)", "1/lr"),
    "lin_2_over_lmax": kit.Metric("linear regression: GD's threshold 2/lambda_max", "lr"),
    "lin_eta_div": kit.Metric("smallest diverging grid learning rate, median over seeds", "lr"),
    "lin_seeds_without_divergence": kit.Metric("seeds with no diverging rate on the grid", "seeds"),
    "lin_pred_trace": kit.Metric("prediction 2B / tr(NTK)", "lr"),
    "lin_pred_kernel": kit.Metric("prediction: noise-kernel criterion K(eta) = 1", "lr"),
    "lin_pred_exact": kit.Metric("prediction: SGD's second moment stops contracting", "lr"),
    "lin_ratio_trace": kit.Metric("measured / (2B / tr(NTK))"),
    "lin_ratio_kernel": kit.Metric("measured / noise-kernel prediction"),
    "lin_ratio_exact": kit.Metric("measured / second-moment threshold"),
    "lin_ratio_lmax": kit.Metric("measured / (2 / lambda_max)"),
    "mlp_noise_kernel_at_init": kit.Metric(
        "MLP: eta c_B tr(K) / (2o) at step 0, before any update (> 1 predicts divergence)"
    ),
    "mlp_noise_kernel_final": kit.Metric("MLP: eta c_B tr(K) / (2o) at the last measurement"),
    "mlp_sharpness_x_lr_final": kit.Metric("MLP: eta * sharpness at the last measurement"),
    "mlp_sharpness_x_lr_max": kit.Metric("MLP: eta * largest sharpness measured"),
    "mlp_batch_sharpness_x_lr": kit.Metric(
        "MLP: eta * batch sharpness, mean over the last quarter of the run (2 at the edge)"
    ),
    "mlp_sharpness_x_lr_late": kit.Metric(
        "MLP: eta * sharpness (full training set), mean over the last quarter of the run"
    ),
    "mlp_num_diverged": kit.Metric("MLP: members that diverged (left out of the above)", "runs"),
    "elapsed_s": kit.Metric("wall-clock time of the study (sum over points)", "s"),
}


def summary(results: Results) -> dict[str, Any]:
    """The divergence rate per batch size against each prediction; the MLP's curvature."""
    r, c = results, results.config
    lab = [_label(int(b), c.lin_n) for b in r.lin_batch_sizes]
    med = np.asarray([stats.nanmedian_or_nan(v) for v in r.lin_eta_div])
    lmax = float(r.lin_lmax)
    per = lambda v: {k: float(x) for k, x in zip(lab, v, strict=True)}  # noqa: E731
    out: dict[str, Any] = {
        "lin_trace_ntk": float(r.lin_trace),
        "lin_lmax": lmax,
        "lin_2_over_lmax": 2.0 / lmax,
        "lin_eta_div": per(med),
        "lin_seeds_without_divergence": {
            k: int(np.sum(~np.isfinite(v))) for k, v in zip(lab, r.lin_eta_div, strict=True)
        },
        "lin_pred_trace": per(r.lin_pred_trace),
        "lin_pred_kernel": per(r.lin_pred_kernel),
        "lin_pred_exact": per(r.lin_pred_exact),
        "lin_ratio_trace": per(med / r.lin_pred_trace),
        "lin_ratio_kernel": per(med / r.lin_pred_kernel),
        "lin_ratio_exact": per(med / r.lin_pred_exact),
        "lin_ratio_lmax": per(med * lmax / 2),
    }
    if r.mlp_batch_sizes.size:
        sharp, kern, _, bsharp = mlp_curves(r)
        o = np.nan if c.problem else core.OUTPUTS  # the kernel is the digits MLP's (module doc)
        late = r.mlp_record_steps >= 0.75 * r.mlp_record_steps[-1]  # the last quarter
        mlab = [_label(int(b), c.mlp_n) for b in r.mlp_batch_sizes]
        mper = lambda v: {k: float(x) for k, x in zip(mlab, v, strict=True)}  # noqa: E731
        cb = np.asarray([core.batch_noise(int(b), c.mlp_n) for b in r.mlp_batch_sizes])
        init = c.mlp_lr * cb * r.mlp_ntk_trace[:, :, 0].mean(1) / (2 * o)
        out["mlp_noise_kernel_at_init"] = mper(init)
        out["mlp_noise_kernel_final"] = mper(kern[:, -1])
        out["mlp_sharpness_x_lr_final"] = mper(c.mlp_lr * sharp[:, -1])
        fin = [v[np.isfinite(v)] for v in sharp]
        out["mlp_sharpness_x_lr_max"] = mper(
            [c.mlp_lr * v.max() if v.size else np.nan for v in fin]
        )
        out["mlp_batch_sharpness_x_lr"] = mper(c.mlp_lr * np.mean(bsharp[:, late], axis=1))
        out["mlp_sharpness_x_lr_late"] = mper(c.mlp_lr * np.mean(sharp[:, late], axis=1))
        out["mlp_num_diverged"] = {
            k: int(np.sum(d)) for k, d in zip(mlab, r.mlp_diverged, strict=True)
        }
    out["elapsed_s"] = float(r.elapsed)
    return out


def verdict(results: Results) -> list[str]:
    """Per batch size, the measured instability beside the prediction; the MLP's outcomes."""
    r, s, out = results, summary(results), []
    paper, gd = "Agarwala & Pennington 2024", 2.0 / float(r.lin_lmax)
    for i, b in enumerate(r.lin_batch_sizes):
        key = _label(int(b), r.config.lin_n)
        eta = s["lin_eta_div"][key]
        if not np.isfinite(eta):
            out.append(f"SGD {key}: no learning rate on the grid diverged (not counted).")
        elif r.lin_pred_trace[i] <= 0.5 * gd:  # the noise-dominated regime: 2B/tr K << 2/lambda
            out.append(
                kit.compare(
                    f"SGD {key}: smallest diverging eta {kit.fmt(eta)} / (2B/tr K)",
                    s["lin_ratio_trace"][key],
                    paper,
                    f"~1, far below 2/lambda_max = {kit.fmt(gd)}",
                    ok=0.85 <= s["lin_ratio_trace"][key] <= 1.15,
                )
            )
        else:
            out.append(
                kit.compare(
                    f"SGD {key}: smallest diverging eta {kit.fmt(eta)} / second-moment threshold",
                    s["lin_ratio_exact"][key],
                    "the crossover to GD (docs)",
                    "1 to 1.2: one 9% grid step plus the finite horizon",
                    ok=0.95 <= s["lin_ratio_exact"][key] <= 1.25,
                )
            )
    if not r.mlp_batch_sizes.size:
        return out
    trained = []
    for i, b in enumerate(r.mlp_batch_sizes):
        key = _label(int(b), r.config.mlp_n)
        div, k0 = bool(r.mlp_diverged[i].any()), s["mlp_noise_kernel_at_init"][key]
        # Only an order of magnitude for an MLP: measured, B=1 diverges at 1.8-2.0x the estimate.
        ok = div if k0 > 2 else (not div if k0 < 1 else None)
        name, done = core.mlp_name(r.config), "diverged" if div else "trained"
        if r.config.problem:
            out.append(f"{name} {key} {done} (the noise kernel is the digits MLP's).")
        else:
            out.append(kit.compare(f"{name} {key} {done}; eta c_B tr(K)/(2o) at init", k0, paper,
                                   "an order of magnitude: > 2 diverges, < 1 trains", ok=ok))  # fmt: skip
        if not div:
            trained.append((key, s["mlp_sharpness_x_lr_final"][key]))
        if not div and b < r.config.mlp_n:
            out.append(core.batch_sharpness_verdict(key, s, name=name))
    if len(trained) >= 2:
        vals = [v for _, v in trained]
        out.append(
            kit.compare(
                f"{core.mlp_name(r.config)} eta*sharpness at the end, by batch size",
                ", ".join(f"{k}: {kit.fmt(v)}" for k, v in trained),
                paper,
                "smaller batches sharpen less (conservative sharpening)",
                ok=bool(np.all(np.diff(vals) >= 0)),
            )
        )
    return out


def figures(results: Results) -> dict[str, Figure]:
    """The divergence learning rate against batch size; MLP sharpness and NTK trace over steps."""
    sharp, kern, loss, bsharp = mlp_curves(results)
    return plots.draw(results, NAME, sharpness=sharp, kernel=kern, loss=loss, batch=bsharp)


save, load = kit.persistence(NAME, Results, Config, summary)
