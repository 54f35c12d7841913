"""Reproduce the adaptive edge of stability: full-batch Adam holds eta lambda_max(P^-1 H) at 38.

Cohen et al. 2022 (arXiv 2207.14484). The edge-of-stability study's problem
(:func:`studies._common.make_problem`: a tanh MLP on centred digits, MSE) is trained full batch by

* **Adam** (``b1 = 0.9``, ``b2 = 0.999``): the preconditioned sharpness
  ``lambda_max(P^-1/2 H P^-1/2)``, with ``P = (1 - b1^(t+1)) (sqrt(v_{t+1} / (1 - b2^(t+1))) + eps)``
  the preconditioner the *next* update applies (:func:`hessian_lab.adam_preconditioner`), rises
  until ``eta lambda = (2 + 2 b1) / (1 - b1)`` (38) and hovers there, while the raw sharpness
  ``lambda_max(H)`` keeps rising: no threshold holds it;
* **RMSProp** as optax writes it (``nu_{t+1} = d nu_t + (1 - d) g^2``, step ``-eta g / sqrt(nu_{t+1}
  + eps)``: eps inside the root, no bias correction, no momentum), whose preconditioner is
  ``P_t = sqrt(d nu_t + (1 - d) g_t^2 + eps)`` (:func:`hessian_lab.rmsprop_preconditioner`): threshold 2;
* **frozen-preconditioner Adam**: Adam up to ``freeze_step``, then ``P`` is frozen at the value the
  next Adam update would apply and training continues with the same EMA momentum,
  ``m <- b1 m + (1 - b1) g``, ``theta <- theta - eta P^-1 m``. For a quadratic this is heavy-ball
  momentum in the coordinates ``P^1/2 theta``, so the threshold is *exactly* ``(2 + 2 b1) / (1 -
  b1)`` (the momentum form; preconditioned GD without momentum would have 2).

Example:
  >>> from hessian_lab.studies import adaptive_eos as ae
  >>> r = ae.run(ae.TINY)  # doctest: +SKIP
  >>> round(ae.summary(r)["adam_late_median_lr0"])  # doctest: +SKIP
  38
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import hessian_lab as hl
from hessian_lab import callbacks as cbs
from hessian_lab.optim import make_optimizer
from hessian_lab.studies._results import load_results, save_results
from hessian_lab.trainer import train

from . import _common as cm

__all__ = ["DEFAULT", "NAME", "TINY", "Config", "Results", "figures", "frozen_momentum", "load"]
__all__ += ["plateau_record", "run", "save", "summary", "threshold"]

NAME = "adaptive_eos"


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the adaptive-EoS study (MSE normalisation recorded in ``normalization``).

    The problem is ``studies._common.make_problem`` (the edge-of-stability study's): the first
    ``n`` digits scaled to [0, 1] and centred per feature, one-hot targets, an MLP, MSE.
    """

    normalization: Literal["per_example", "per_output"] = "per_example"
    n: int = 500  # digits training examples
    depth: int = 2
    width: int = 64
    activation: Literal["tanh", "relu", "gelu", "silu", "erf"] = "tanh"
    seed: int = 0
    num_steps: int = 4000
    adam_lrs: tuple[float, ...] = (0.001, 0.002)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    freeze_step: int = 2000  # frozen-preconditioner branch starts here (0: skip the branch)
    rmsprop_lrs: tuple[float, ...] = (0.0001, 0.0003)  # empty: skip RMSProp
    rmsprop_decay: float = 0.99
    rmsprop_eps: float = 1e-8
    every: int = 25
    num_iters: int = 15
    late_fraction: float = 0.3  # "late part": the last 30% of the steps
    plateau_fraction: float = 0.9  # plateau onset: first eta lambda(P^-1 H) >= this x threshold

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        need(self.normalization in ("per_example", "per_output"), "normalization",
             "'per_example' or 'per_output'")  # fmt: skip
        need(self.activation in ("tanh", "relu", "gelu", "silu", "erf"), "activation",
             "one of tanh, relu, gelu, silu, erf")  # fmt: skip
        for f in ("n", "width", "num_steps", "every", "num_iters"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "an int >= 1")
        need(isinstance(self.depth, int) and self.depth >= 0, "depth", "an int >= 0")
        need(self.n <= 1797, "n", "<= 1797 (the digits dataset)")
        need(len(self.adam_lrs) >= 1 and all(np.isfinite(x) and x > 0 for x in self.adam_lrs),
             "adam_lrs", "a non-empty tuple of positive numbers")  # fmt: skip
        need(all(np.isfinite(x) and x > 0 for x in self.rmsprop_lrs), "rmsprop_lrs",
             "a tuple of positive numbers (empty: skip RMSProp)")  # fmt: skip
        for f in ("b1", "b2", "rmsprop_decay"):
            need(0 <= getattr(self, f) < 1, f, "in [0, 1)")
        for f in ("eps", "rmsprop_eps"):
            need(np.isfinite(getattr(self, f)) and getattr(self, f) >= 0, f, ">= 0")
        need(isinstance(self.freeze_step, int) and 0 <= self.freeze_step < self.num_steps
             and self.freeze_step % self.every == 0, "freeze_step",
             "an int in [0, num_steps) divisible by every (0: no frozen branch)")  # fmt: skip
        need(0 < self.late_fraction <= 1, "late_fraction", "in (0, 1]")
        need(0 < self.plateau_fraction <= 1, "plateau_fraction", "in (0, 1]")


DEFAULT = Config()
TINY = Config(n=128, width=32, num_steps=250, adam_lrs=(0.02,), b2=0.99, freeze_step=0,
              rmsprop_lrs=(), every=10, num_iters=10)  # fmt: skip


def threshold(b1: float) -> float:
    """Return the stability threshold (2 + 2 b1) / (1 - b1) of eta lambda(P^-1 H) (2 for b1 = 0)."""
    return (2.0 + 2.0 * b1) / (1.0 - b1)


@dataclasses.dataclass
class Results:
    """Arrays of one run (A Adam rates, R RMSProp rates, K records every ``every`` steps, T steps)."""

    config: Config
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


def _find(tree, cls) -> list:
    is_cls = lambda s: isinstance(s, cls)  # noqa: E731
    return [s for s in jax.tree.leaves(tree, is_leaf=is_cls) if is_cls(s)]


class FrozenState(NamedTuple):
    """State of :func:`frozen_momentum`: the EMA momentum and the frozen diagonal ``P``."""

    mu: Any
    precond: Any


def frozen_momentum(learning_rate, b1) -> optax.GradientTransformation:
    """Adam with ``P`` frozen: ``m <- b1 m + (1 - b1) g``, update ``-learning_rate m / P``.

    ``init`` gives ``mu = 0`` and ``P = 1``; set ``FrozenState(mu, P)`` from an Adam state. Use
    through ``optax.inject_hyperparams(frozen_momentum)`` so the rate is an array.
    """

    def init(params):
        return FrozenState(jax.tree.map(jnp.zeros_like, params),
                           jax.tree.map(jnp.ones_like, params))  # fmt: skip

    def update(grads, state, params=None):
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        upd = jax.tree.map(lambda m, p: -learning_rate * m / p, mu, state.precond)
        return upd, FrozenState(mu, state.precond)

    return optax.GradientTransformation(init, update)


def _eig_callback(loss_fn, precond_fn, *, name, every, num_iters) -> cbs.Callback:
    """Top eigenvalue of ``H`` (``precond_fn`` None) or of ``P^-1/2 H P^-1/2``, full training set.

    ``precond_fn(opt_state, grads) -> P``: any diagonal ``P``. Lanczos warm-starts from the last top
    eigenvector; the first start vector is drawn by numpy (no compile, unlike ``callbacks``).
    """

    def init(params):
        rng = np.random.default_rng(0)
        v = [rng.standard_normal(x.shape) for x in jax.tree.leaves(params)]
        norm = np.sqrt(sum(np.sum(x * x) for x in v))
        v = [
            jnp.asarray(x / norm, p.dtype) for x, p in zip(v, jax.tree.leaves(params), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), v)

    def update(v0, info):
        mv = hl.full_data_hvp(loss_fn, info.params, info.data, chunk_size=info.data[0].shape[0])
        if precond_fn is None:
            res = hl.top_eigs(mv, v0, k=1, num_iters=num_iters)
        else:
            p = precond_fn(info.opt_state, info.grads)
            res = hl.preconditioned_sharpness(mv, p, v0, k=1, num_iters=num_iters)
        v1 = jax.tree.map(lambda x: x[0], res.vectors)
        return v1, {name: res.values[0].astype(jnp.result_type(float))}

    return cbs.Callback(init, update, every)


def _problem(config: Config) -> cm.Problem:
    return cm.make_problem(n_train=config.n, depth=config.depth, width=config.width,
                           activation=config.activation, normalization=config.normalization)  # fmt: skip


_TOOLS: dict = {}


def _tools(c: Config, loss_fn) -> tuple:
    """(adam, frozen, rmsprop) and their callback lists, cached: a rerun reuses the compiled chunks."""
    key = (id(loss_fn), c.b1, c.b2, c.eps, c.rmsprop_decay, c.rmsprop_eps, c.every, c.num_iters)
    if key in _TOOLS:
        return _TOOLS[key][1]
    kw = {"every": c.every, "num_iters": c.num_iters}
    pre = "preconditioned_sharpness"
    sharp = _eig_callback(loss_fn, None, name="sharpness", **kw)
    adam_p = lambda s, g: hl.adam_preconditioner(s, g, b1=c.b1, b2=c.b2, eps=c.eps)  # noqa: E731
    rms_p = lambda s, g: hl.rmsprop_preconditioner(s, g, decay=c.rmsprop_decay, eps=c.rmsprop_eps)  # noqa: E731
    tools = (
        make_optimizer("adam", learning_rate=1.0, b1=c.b1, b2=c.b2, eps=c.eps),
        optax.inject_hyperparams(frozen_momentum)(learning_rate=1.0, b1=c.b1),
        make_optimizer("rmsprop", learning_rate=1.0, decay=c.rmsprop_decay, eps=c.rmsprop_eps),
        [_eig_callback(loss_fn, adam_p, name=pre, **kw), sharp],
        [_eig_callback(loss_fn, lambda s, g: s.inner_state.precond, name=pre, **kw), sharp],
        [_eig_callback(loss_fn, rms_p, name=pre, **kw), sharp],
    )
    _TOOLS[key] = (loss_fn, tools)  # keep loss_fn alive so its id is not reused
    return tools


def _metrics(hist, diverged, num_steps, every):
    """Pad per-step metrics to ``num_steps``; pick the records (every ``every`` steps)."""
    pad = lambda a: np.concatenate([a, np.full(num_steps - a.size, np.nan)])  # noqa: E731
    pre, sharp, loss = (pad(hist[k]) for k in ("preconditioned_sharpness", "sharpness", "loss"))
    return pre[::every], sharp[::every], loss, bool(diverged)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O); ``progress(done, total)`` after each training run."""
    t0 = time.perf_counter()
    c, T, e = config, config.num_steps, config.every
    prob = _problem(c)
    loss_fn, data = prob.loss_fn, prob.data
    params0 = prob.model.init(jax.random.key(c.seed))
    adam, frozen, rms, adam_cbs, frozen_cbs, rms_cbs = _tools(c, loss_fn)
    phases = [T] if c.freeze_step == 0 else [c.freeze_step, T - c.freeze_step]
    chunk = min(500, *phases)  # equal chunks: both Adam phases reuse one compiled program
    total, done = len(c.adam_lrs) * (1 + (c.freeze_step > 0)) + len(c.rmsprop_lrs), 0
    out: dict[str, list] = {k: [] for k in ("adam", "frozen", "rms")}

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for lr in c.adam_lrs:
        hp = {"learning_rate": lr}
        r1 = train(loss_fn, params0, adam, data, num_steps=phases[0], callbacks=adam_cbs,
                   hyperparams=hp, chunk_size=chunk)  # fmt: skip
        hists = [r1.history]
        if c.freeze_step and not r1.history.diverged:
            r2 = train(loss_fn, r1.params, adam, data, num_steps=phases[1], callbacks=adam_cbs,
                       hyperparams=hp, opt_state=r1.opt_state, chunk_size=chunk)  # fmt: skip
            hists.append(r2.history)
        names = ("preconditioned_sharpness", "sharpness", "loss")
        merged = {k: np.concatenate([h[k] for h in hists]) for k in names}
        div = any(h.diverged for h in hists)
        out["adam"].append(_metrics(merged, div, T, e))
        tick()
        if not c.freeze_step:
            continue
        fz = np.full(T, np.nan)
        res = (fz[::e], fz[::e], fz, False)
        if not r1.history.diverged:
            g = jax.grad(loss_fn)(r1.params, data)
            p = hl.adam_preconditioner(r1.opt_state, g, b1=c.b1, b2=c.b2, eps=c.eps)
            mu = _find(r1.opt_state, optax.ScaleByAdamState)[0].mu
            st = frozen.init(r1.params)
            st = st._replace(inner_state=FrozenState(mu, p))
            rf = train(loss_fn, r1.params, frozen, data, num_steps=phases[1], callbacks=frozen_cbs,
                       hyperparams=hp, opt_state=st, chunk_size=chunk)  # fmt: skip
            h = {k: np.concatenate([np.full(c.freeze_step, np.nan), rf.history[k]]) for k in names}
            res = _metrics(h, rf.history.diverged, T, e)
        out["frozen"].append(res)
        tick()
    for lr in c.rmsprop_lrs:
        r = train(loss_fn, params0, rms, data, num_steps=T, callbacks=rms_cbs,
                  hyperparams={"learning_rate": lr}, chunk_size=chunk)  # fmt: skip
        out["rms"].append(_metrics(r.history, r.history.diverged, T, e))
        tick()

    k, arrays = T // e + (T % e > 0), {}
    for key, rows in out.items():
        for j, (field, width) in enumerate((("pre", k), ("sharp", k), ("loss", T))):
            arrays[f"{key}_{field}"] = (
                np.stack([o[j] for o in rows]) if rows else np.zeros((0, width))
            )
        arrays[f"{key}_diverged"] = np.array([o[3] for o in rows], bool)
    return Results(config=c, record_steps=np.arange(0, T, e), **arrays,
                   elapsed=np.asarray(time.perf_counter() - t0))  # fmt: skip


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load(save(r))`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def late_median(results: Results, values: np.ndarray, lrs) -> np.ndarray:
    """Median of ``eta * values`` over the late part (last ``late_fraction`` of the steps)."""
    late = results.record_steps >= (1 - results.config.late_fraction) * results.config.num_steps
    if values.shape[0] == 0:
        return np.zeros(0)
    return np.nanmedian(np.asarray(lrs)[:, None] * values[:, late], axis=1)


def plateau_record(results: Results, i: int) -> int:
    """Index of the first record after step 0 where Adam run ``i`` reaches the plateau, or -1.

    Plateau onset: ``eta lambda(P^-1 H) >= plateau_fraction * threshold(b1)``. Step 0 is skipped:
    there ``P = (1 - b1)(|g_0| + eps)`` and the momentum is empty, so the value is meaningless.
    """
    c = results.config
    lr = c.adam_lrs[i]
    k = cm.first_reach(lr * results.adam_pre[i, 1:], threshold(c.b1), frac=c.plateau_fraction)
    return k + 1 if k >= 0 else -1


def _plateau(r: Results, i: int, lr: float) -> dict[str, float | int]:
    """Plateau onset step, the raw sharpness there and at the end (does it keep rising?)."""
    k = plateau_record(r, i)
    fin = r.adam_sharp[i][np.isfinite(r.adam_sharp[i])]
    at = float(r.adam_sharp[i, k]) if k >= 0 else float("nan")
    end = float(fin[-1]) if fin.size else float("nan")
    return {f"adam_plateau_step_lr{i}": int(r.record_steps[k]) if k >= 0 else -1,
            f"adam_sharpness_at_plateau_lr{i}": at, f"adam_final_sharpness_lr{i}": end,
            f"adam_sharpness_rise_in_plateau_lr{i}": end / at if k >= 0 else float("nan"),
            f"adam_final_sharpness_x_lr_lr{i}": lr * end}  # fmt: skip


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Key numbers: late medians of eta lambda(P^-1 H) against their thresholds, raw sharpness."""
    r, c = results, results.config
    out: dict[str, float | int | str | bool] = {"normalization": c.normalization}
    out["adam_threshold"] = threshold(c.b1)
    groups = [("adam", c.adam_lrs, r.adam_pre, r.adam_sharp, r.adam_diverged),
              ("frozen", c.adam_lrs, r.frozen_pre, r.frozen_sharp, r.frozen_diverged),
              ("rmsprop", c.rmsprop_lrs, r.rms_pre, r.rms_sharp, r.rms_diverged)]  # fmt: skip
    for name, lrs, pre, sharp, div in groups:
        med = late_median(r, pre, lrs)
        smed = late_median(r, sharp, np.ones(len(lrs)))
        for i, lr in enumerate(lrs[: pre.shape[0]]):
            out[f"{name}_lr{i}"] = float(lr)
            out[f"{name}_late_median_lr{i}"] = float(med[i])
            out[f"{name}_late_sharpness_lr{i}"] = float(smed[i])
            out[f"{name}_diverged_lr{i}"] = bool(div[i])
            if name == "adam":
                out[f"adam_initial_sharpness_lr{i}"] = float(sharp[i, 0])
                out[f"adam_max_sharpness_lr{i}"] = float(np.nanmax(sharp[i]))
                out |= _plateau(r, i, lr)
    out["elapsed_s"] = float(r.elapsed)
    return out


def figures(results: Results) -> dict[str, Figure]:
    """eta lambda(P^-1 H) against its threshold (Adam, frozen P, RMSProp), raw sharpness, loss."""
    from ._adaptive_eos_plots import make_figures

    return make_figures(results)
