"""Reproduce the adaptive edge of stability: full-batch Adam holds eta lambda_max(P^-1 H) at 38.

Cohen et al. 2022 (arXiv 2207.14484). The edge-of-stability study's problem
(:func:`studies.problems.make_problem`: a tanh MLP on centred digits, MSE), or with
``arch="transformer"`` a pre-LayerNorm decoder-only transformer on generated token sequences
(next-token cross-entropy; presets :data:`TRANSFORMER`, :data:`TRANSFORMER_GPU`), is trained full
batch by

* **Adam** (``b1 = 0.9``, ``b2 = 0.999``): the preconditioned sharpness
  ``lambda_max(P^-1/2 H P^-1/2)``, with ``P = (1 - b1^(t+1)) (sqrt(v_{t+1} / (1 - b2^(t+1))) + eps)``
  the preconditioner the *next* update applies (:func:`hessian_lab.adam_preconditioner`), rises
  until ``eta lambda = (2 + 2 b1) / (1 - b1)`` (38) and hovers there, while the raw sharpness
  ``lambda_max(H)`` keeps rising: no threshold holds it;
* **RMSProp** as optax writes it (``nu_{t+1} = d nu_t + (1 - d) g^2``, step ``-eta g / sqrt(nu_{t+1}
  + eps)``: eps inside the root, no bias correction, no momentum), whose preconditioner is
  ``P_t = sqrt(d nu_t + (1 - d) g_t^2 + eps)`` (:func:`hessian_lab.rmsprop_preconditioner`):
  threshold 2;
* **frozen-preconditioner Adam**: Adam up to ``freeze_step``, then ``P`` is frozen at the value the
  next Adam update would apply and training continues with the same EMA momentum,
  ``m <- b1 m + (1 - b1) g``, ``theta <- theta - eta P^-1 m``. For a quadratic this is heavy-ball
  momentum in the coordinates ``P^1/2 theta``, so the threshold is *exactly* ``(2 + 2 b1) / (1 -
  b1)`` (the momentum form; preconditioned GD without momentum would have 2).

Runs that diverge are counted and left out of every statistic.

Example:
  >>> from hessian_lab.studies import adaptive_eos as ae
  >>> r = ae.run(ae.TINY)  # doctest: +SKIP
  >>> round(ae.summary(r)["late_median_x_lr"]["Adam eta=0.02"])  # doctest: +SKIP
  38
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import numpy as np
from matplotlib.figure import Figure

from . import adaptive_eos_core as core
from . import adaptive_eos_plots as plots
from . import kit, stats
from .adaptive_eos_core import FrozenState as FrozenState
from .adaptive_eos_core import frozen_momentum as frozen_momentum
from .adaptive_eos_core import frozen_state as frozen_state
from .adaptive_eos_core import threshold as threshold
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "FrozenState"]
__all__ += ["TINY_TRANSFORMER", "TRANSFORMER", "TRANSFORMER_GPU"]
__all__ += ["Results", "check_inputs", "figures", "frozen_momentum", "frozen_state", "late", "load"]
__all__ += ["plateau_record", "run", "save", "summary", "threshold", "verdict"]

NAME = "adaptive_eos"
PAPER = "Cohen et al. 2022, arXiv 2207.14484"
DOCS = "docs/studies/adaptive_eos.md"
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "erf")
BAND = (0.85, 1.15)  # a late median within these fractions of its threshold counts as "at it"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the study: the problem (EoS MLP or transformer), optimizers, measurement."""

    arch: Literal["mlp", "transformer"] = knob(
        "mlp", "network: the edge-of-stability MLP on digits, or a pre-LN transformer on tokens"
    )
    n: int = knob(500, "training examples: the first n digits (mlp, <= 1797) or n sequences")
    normalization: Literal["per_example", "per_output"] = knob(
        "per_example", "mlp: MSE convention, 1/(2n) sum ||f-y||^2, or also / outputs"
    )
    depth: int = knob(2, "mlp: hidden layers")
    width: int = knob(64, "mlp: units per hidden layer")
    activation: Literal["tanh", "relu", "gelu", "silu", "erf"] = knob("tanh", "mlp: activation")
    task: Literal["walks", "lcg"] = knob(
        "walks", "transformer data: walks on a random graph, or linear congruential sequences"
    )
    vocab: int = knob(16, "transformer: tokens (the graph's nodes, or the LCG modulus)")
    context: int = knob(8, "transformer: tokens per training sequence")
    d_model: int = knob(16, "transformer: width of the residual stream")
    num_layers: int = knob(1, "transformer: blocks")
    num_heads: int = knob(2, "transformer: attention heads (divides d_model)")
    seed: int = knob(0, "initialisation (and sequence data) seed, shared by every run")
    num_steps: int = knob(4000, "full-batch steps per run")
    adam_lrs: tuple[float, ...] = knob((0.001, 0.002), "Adam learning rates eta, one run each")
    b1: float = knob(0.9, "Adam's momentum b1 (threshold (2 + 2 b1) / (1 - b1))")
    b2: float = knob(0.999, "Adam's second-moment decay b2")
    eps: float = knob(1e-8, "Adam's eps")
    freeze_step: int = knob(2000, "step at which each Adam run forks a frozen-P branch (0: none)")
    rmsprop_lrs: tuple[float, ...] = knob((0.0001, 0.0003), "RMSProp learning rates (empty: none)")
    rmsprop_decay: float = knob(0.99, "RMSProp's decay of the squared gradients")
    rmsprop_eps: float = knob(1e-8, "RMSProp's eps (inside the square root, as in optax)")
    every: int = knob(25, "measure both sharpnesses (Lanczos) every k steps")
    num_iters: int = knob(15, "Lanczos iterations per measurement")
    late_fraction: float = knob(0.3, "the 'late part' of a run: its last fraction of steps")
    plateau_fraction: float = knob(0.9, "plateau onset: eta lambda(P^-1 H) >= this x threshold")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_choice(self, "arch", core.ARCHS)
        kit.check_choice(self, "normalization", ("per_example", "per_output"))
        kit.check_choice(self, "activation", ACTIVATIONS)
        kit.check_choice(self, "task", core.TASKS)
        kit.check_ints(self, "n", "width", "num_steps", "every", "num_iters")
        kit.check_ints(self, "context", "d_model", "num_heads")
        kit.check_ints(self, "vocab", minimum=3)  # the graph's out-degree is 3
        kit.check_ints(self, "depth", minimum=0, maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "num_layers", maximum=kit.MAX_DEPTH)
        kit.check_seeds(self, "seed")
        need(self.arch != "mlp" or self.n <= 1797, self, "n", "<= 1797 (the digits dataset)")
        need(self.d_model % self.num_heads == 0, self, "num_heads", "a divisor of d_model")
        kit.check_rates(self, "adam_lrs")
        kit.check_rates(self, "rmsprop_lrs", allow_empty=True)
        for f in ("b1", "b2", "rmsprop_decay"):
            need(0 <= getattr(self, f) < 1, self, f, "in [0, 1)")
        kit.check_positive(self, "eps", "rmsprop_eps", allow_zero=True)
        need(
            kit.is_int(self.freeze_step)
            and 0 <= self.freeze_step < self.num_steps
            and self.freeze_step % self.every == 0,
            self,
            "freeze_step",
            "an int in [0, num_steps) divisible by every (0: no frozen branch)",
        )
        need(0 < self.late_fraction <= 1, self, "late_fraction", "in (0, 1]")
        need(0 < self.plateau_fraction <= 1, self, "plateau_fraction", "in (0, 1]")


DEFAULT = Config()
TINY = Config(
    n=128,
    width=32,
    num_steps=250,
    adam_lrs=(0.02,),
    b2=0.99,
    freeze_step=0,
    rmsprop_lrs=(),
    every=10,
    num_iters=10,
)
# Adam on a 1-block transformer (3.9k parameters) learning graph walks: minutes on a 2-core CPU
TRANSFORMER = Config(
    arch="transformer",
    n=256,
    num_steps=1500,
    freeze_step=750,
    rmsprop_lrs=(0.0003,),
)
TINY_TRANSFORMER = Config(
    arch="transformer",
    n=64,
    vocab=8,
    context=6,
    d_model=8,
    num_steps=300,
    adam_lrs=(0.01,),
    freeze_step=0,
    rmsprop_lrs=(),
    every=10,
    num_iters=10,
)
# two 64-wide blocks on 1024 walks of 32 tokens over 32 nodes (106k parameters): for a GPU
TRANSFORMER_GPU = Config(
    arch="transformer",
    n=1024,
    vocab=32,
    context=32,
    d_model=64,
    num_layers=2,
    num_heads=4,
    num_steps=4000,
    freeze_step=2000,
    rmsprop_lrs=(0.0003,),
    num_iters=20,
)


@dataclasses.dataclass
class Results:
    """Arrays of one run (A Adam rates, R RMSProp rates, K records every ``every`` steps, T steps)."""

    config: Any
    record_steps: np.ndarray  # (K,)
    adam_pre: np.ndarray  # (A, K) lambda_max(P^-1 H), NaN after divergence
    adam_sharp: np.ndarray  # (A, K) lambda_max(H)
    adam_loss: np.ndarray  # (A, T)
    adam_diverged: np.ndarray  # (A,)
    frozen_pre: np.ndarray  # (A, K) frozen-P branch; NaN before freeze_step
    frozen_sharp: np.ndarray  # (A, K)
    frozen_loss: np.ndarray  # (A, T)
    frozen_diverged: np.ndarray  # (A,)
    rms_pre: np.ndarray  # (R, K)
    rms_sharp: np.ndarray  # (R, K)
    rms_loss: np.ndarray  # (R, T)
    rms_diverged: np.ndarray  # (R,)
    elapsed: np.ndarray  # ()


def check_inputs(config: Config) -> None:
    """Before any work: ``num_iters`` is at most the number of parameters (``jax.eval_shape``).

    Raises:
      ValueError: naming the field.
    """
    c = config
    dim = kit.num_params(core.make_model(c))
    kit.check_budget(c, "num_iters", dim, "the number of parameters")
    kit.check_memory(c, "width" if c.arch == "mlp" else "d_model", dim, 8 + c.num_iters)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run Adam (and its frozen-P branch) and RMSProp at every rate (no I/O).

    ``progress(done, total)`` counts training steps over all runs.
    """
    check_inputs(config)  # what the Config alone cannot know, before any work
    t0 = time.perf_counter()
    c = config
    arrays = core.train_all(c, core.make_problem(c), progress=progress)
    return Results(config=c, **arrays, elapsed=np.asarray(time.perf_counter() - t0))


def late(results: Results) -> np.ndarray:
    """Which records lie in the late part of a run (its last ``late_fraction`` of the steps)."""
    c = results.config
    return results.record_steps >= (1 - c.late_fraction) * c.num_steps


def plateau_record(results: Results, i: int) -> int:
    """Index of the first record after step 0 where Adam run ``i`` reaches the plateau, or -1.

    Plateau onset: ``eta lambda(P^-1 H) >= plateau_fraction * threshold(b1)``. Step 0 is skipped:
    there ``P = (1 - b1)(|g_0| + eps)`` and the momentum is empty, so the value is meaningless.
    """
    c = results.config
    lr = c.adam_lrs[i]
    k = stats.first_reach(lr * results.adam_pre[i, 1:], threshold(c.b1), frac=c.plateau_fraction)
    return k + 1 if k >= 0 else -1


class _Run(NamedTuple):
    label: str  # "Adam eta=0.001", "Adam, P frozen eta=0.001", "RMSProp eta=0.0001"
    lr: float
    pre: np.ndarray  # (K,) lambda_max(P^-1 H)
    sharp: np.ndarray  # (K,) lambda_max(H)
    diverged: bool
    threshold: float
    reference: str  # the paper's statement of the threshold


def _runs(r: Results) -> list[_Run]:
    """Every run of the study, Adam first, then the frozen branches, then RMSProp."""
    c, thr = r.config, threshold(r.config.b1)
    groups = [
        ("Adam", c.adam_lrs, r.adam_pre, r.adam_sharp, r.adam_diverged, thr, f"{thr:g}"),
        (
            "Adam, P frozen",
            c.adam_lrs,
            r.frozen_pre,
            r.frozen_sharp,
            r.frozen_diverged,
            thr,
            f"{thr:g}, exactly (heavy ball in P^1/2 theta)",
        ),
        ("RMSProp", c.rmsprop_lrs, r.rms_pre, r.rms_sharp, r.rms_diverged, 2.0, "2"),
    ]
    return [
        _Run(f"{name} eta={lrs[i]:g}", lrs[i], pre[i], sharp[i], bool(div[i]), t, ref)
        for name, lrs, pre, sharp, div, t, ref in groups
        for i in range(pre.shape[0])
    ]


METRICS = {
    "threshold": kit.Metric("critical eta*lambda_max(P^-1 H): (2+2 b1)/(1-b1) for Adam, 2 RMSProp"),
    "late_median_x_lr": kit.Metric("median eta*lambda_max(P^-1 H) over the late part of the run"),
    "late_ratio": kit.Metric("late median / threshold (1 = at the edge)"),
    "late_sharpness": kit.Metric("median raw sharpness lambda_max(H) over the late part", "1/lr"),
    "initial_sharpness": kit.Metric("Adam: raw sharpness at step 0", "1/lr"),
    "max_sharpness": kit.Metric("Adam: largest raw sharpness measured", "1/lr"),
    "plateau_step": kit.Metric(
        "Adam: first step with eta*lambda(P^-1 H) >= plateau_fraction x threshold (-1: never)",
        "steps",
    ),
    "sharpness_at_plateau": kit.Metric("Adam: raw sharpness at the plateau onset", "1/lr"),
    "final_sharpness": kit.Metric("Adam: raw sharpness at the last measurement", "1/lr"),
    "sharpness_rise_in_plateau": kit.Metric(
        "Adam: final / plateau-onset raw sharpness (> 1: rose)"
    ),
    "final_sharpness_x_lr": kit.Metric("Adam: eta * final raw sharpness (GD's threshold is 2)"),
    "diverged": kit.Metric("the run diverged (left out of every statistic)"),
    "num_diverged": kit.Metric("runs that diverged", "runs"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}
ADAM_ONLY = ("initial_sharpness", "max_sharpness", "plateau_step", "sharpness_at_plateau")
ADAM_ONLY += ("final_sharpness", "sharpness_rise_in_plateau", "final_sharpness_x_lr")


def _adam_sharpness(r: Results, i: int) -> dict[str, float | int]:
    """Adam run ``i``'s raw sharpness: at step 0, its maximum, at the plateau onset, at the end."""
    nan, k, lr = float("nan"), plateau_record(r, i), r.config.adam_lrs[i]
    s = r.adam_sharp[i]
    fin = s[np.isfinite(s)]
    if r.adam_diverged[i] or not fin.size:
        return dict.fromkeys(ADAM_ONLY, nan)
    at = float(s[k]) if k >= 0 else nan
    return {
        "initial_sharpness": float(s[0]),
        "max_sharpness": float(fin.max()),
        "plateau_step": int(r.record_steps[k]) if k >= 0 else -1,
        "sharpness_at_plateau": at,
        "final_sharpness": float(fin[-1]),
        "sharpness_rise_in_plateau": float(fin[-1]) / at if k >= 0 else nan,
        "final_sharpness_x_lr": lr * float(fin[-1]),
    }


def summary(results: Results) -> dict[str, Any]:
    """Per run: late median of eta lambda(P^-1 H) against its threshold; Adam's raw sharpness."""
    r, out = results, {k: {} for k in METRICS if k not in ("num_diverged", "elapsed_s")}
    keep = late(r)
    for run_ in _runs(r):
        lab, nan = run_.label, float("nan")
        med = nan if run_.diverged else stats.nanmedian_or_nan(run_.lr * run_.pre[keep])
        out["threshold"][lab] = run_.threshold
        out["late_median_x_lr"][lab] = med
        out["late_ratio"][lab] = med / run_.threshold
        out["late_sharpness"][lab] = (
            nan if run_.diverged else stats.nanmedian_or_nan(run_.sharp[keep])
        )
        out["diverged"][lab] = run_.diverged
    for i, lr in enumerate(r.config.adam_lrs):
        for key, v in _adam_sharpness(r, i).items():
            out[key][f"Adam eta={lr:g}"] = v
    out["num_diverged"] = sum(run_.diverged for run_ in _runs(r))
    out["elapsed_s"] = float(r.elapsed)
    return out


def verdict(results: Results) -> list[str]:
    """Each run's late median beside its threshold; Adam's raw sharpness kept rising."""
    r, s, out = results, summary(results), []
    for run_ in _runs(r):
        if run_.diverged:
            out.append(f"{run_.label}: diverged (not counted).")
            continue
        ratio = s["late_ratio"][run_.label]
        out.append(
            kit.compare(
                f"{run_.label}: late median eta*lambda_max(P^-1 H)",
                s["late_median_x_lr"][run_.label],
                "Cohen et al. 2022",
                run_.reference,
                ok=BAND[0] <= ratio <= BAND[1],
            )
        )
    for i, lr in enumerate(r.config.adam_lrs):
        label = f"Adam eta={lr:g}"
        rise = s["sharpness_rise_in_plateau"][label]
        if r.adam_diverged[i] or not np.isfinite(rise):
            continue
        what = (
            f"{label}: raw sharpness {kit.fmt(s['initial_sharpness'][label])} -> "
            f"{kit.fmt(s['final_sharpness'][label])}, eta*lambda_max(H) "
            f"{kit.fmt(s['final_sharpness_x_lr'][label])}; rise after the plateau began"
        )
        out.append(
            kit.compare(
                what,
                f"x{kit.fmt(rise)}",
                "Cohen et al. 2022",
                "keeps rising, held by no threshold",
                ok=rise > 1,
            )
        )
    return out


def figures(results: Results) -> dict[str, Figure]:
    """eta lambda(P^-1 H) against its threshold (Adam, frozen P, RMSProp), raw sharpness, loss."""
    plateau = np.asarray([plateau_record(results, i) for i in range(results.adam_pre.shape[0])])
    return plots.draw(
        results,
        NAME,
        adam_threshold=threshold(results.config.b1),
        rmsprop_threshold=2.0,
        plateau=plateau,
    )


save, load = kit.persistence(NAME, Results, Config, summary)
