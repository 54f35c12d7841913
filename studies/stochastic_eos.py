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
  slowly at small batch; the NTK trace settles where ``eta c_B tr(NTK) / 2 ~ 1``).

The NTK is normalised like the loss: ``K = J J^T / n`` for the per-example MSE (its non-zero
eigenvalues are those of the Gauss-Newton ``J^T J / n``), ``J J^T / (n o)`` for the per-output
MSE. The trainer shuffles once per epoch (no replacement within an epoch), so a step's batch is a
uniform ``B``-subset and the batch-gradient noise carries ``c_B = (n - B) / (B (n - 1))``
(``~ 1/B - 1/n``). See docs/studies/stochastic_eos.md for the derivations.

Example:
  >>> from hessian_lab.studies import stochastic_eos as se
  >>> r = se.run(se.TINY)  # doctest: +SKIP
  >>> se.summary(r)["lin_ratio_trace_B1"]  # doctest: +SKIP
  1.09...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import brentq
from scipy.sparse.linalg import LinearOperator, eigsh

from hessian_lab import callbacks as cbs
from hessian_lab import data as hd
from hessian_lab import losses, models
from hessian_lab.optim import make_optimizer
from hessian_lab.population import make_step, train_population
from hessian_lab.studies._results import load_results, save_results

__all__ = ["DEFAULT", "NAME", "TINY", "Config", "Results", "assemble", "figures", "load"]
__all__ += ["noise_kernel_threshold", "points", "run", "run_point", "save"]
__all__ += ["second_moment_threshold", "summary"]

NAME = "stochastic_eos"
_OUT = 10  # digits classes: outputs of the MLP


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the stochastic-EoS study (MSE normalisation recorded in ``normalization``)."""

    normalization: Literal["per_example", "per_output"] = "per_example"
    seed: int = 0
    lin_n: int = 256
    lin_dim: int = 64
    lin_batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 256)
    lin_seeds: int = 3
    lin_steps: int = 3000
    grid_lo: float = -1.0  # log2 of the grid's low end / min(2B/tr K, 2/lambda_max)
    grid_hi: float = 1.5
    grid_per_octave: int = 8
    blowup: float = 1000.0  # diverged: minibatch loss > blowup * L_0 (or non-finite)
    mlp_n: int = 256
    mlp_depth: int = 2
    mlp_width: int = 64
    mlp_activation: Literal["tanh", "relu", "gelu", "silu", "erf"] = "tanh"
    mlp_lr: float = 0.15
    mlp_batch_sizes: tuple[int, ...] = (1, 4, 32, 256)  # B = mlp_n is full-batch GD
    mlp_seeds: int = 1
    mlp_steps: int = 1200
    every: int = 50
    num_iters: int = 20

    def __post_init__(self):
        def need(ok, field, allowed):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        need(self.normalization in ("per_example", "per_output"), "normalization",
             "'per_example' or 'per_output'")  # fmt: skip
        for f in ("lin_n", "lin_dim", "lin_seeds", "lin_steps", "grid_per_octave", "mlp_n"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "an int >= 1")
        for f in ("mlp_width", "mlp_seeds", "mlp_steps", "every", "num_iters"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "an int >= 1")
        need(isinstance(self.mlp_depth, int) and self.mlp_depth >= 0, "mlp_depth", "an int >= 0")
        need(len(self.lin_batch_sizes) >= 1
             and all(isinstance(b, int) and 1 <= b <= self.lin_n for b in self.lin_batch_sizes),
             "lin_batch_sizes", f"non-empty ints in [1, lin_n={self.lin_n}]")  # fmt: skip
        need(all(isinstance(b, int) and 1 <= b <= self.mlp_n for b in self.mlp_batch_sizes),
             "mlp_batch_sizes", f"ints in [1, mlp_n={self.mlp_n}] (empty: skip the MLP part)")  # fmt: skip
        need(self.grid_hi > self.grid_lo, "grid_hi", "> grid_lo")
        need(np.isfinite(self.blowup) and self.blowup > 1, "blowup", "a number > 1")
        need(np.isfinite(self.mlp_lr) and self.mlp_lr > 0, "mlp_lr", "a positive number")
        need(self.mlp_activation in ("tanh", "relu", "gelu", "silu", "erf"), "mlp_activation",
             "one of tanh, relu, gelu, silu, erf")  # fmt: skip
        need(self.every <= self.mlp_steps, "every", "<= mlp_steps")


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

    config: Config
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
    mlp_diverged: np.ndarray  # (M, S') bool
    elapsed: np.ndarray  # () seconds


def _fdt():
    return np.dtype(jnp.result_type(float))


def noise_kernel_threshold(spectrum, batch_size: int, n: int) -> float:
    """Solve ``eta c_B sum_i lambda_i / (2 - eta lambda_i) = 1`` for eta (noise-kernel criterion).

    ``c_B = (n - B) / (B (n - 1))`` is the batch-noise factor of a uniform ``B``-subset (epoch
    shuffling); ``spectrum`` holds the eigenvalues of the NTK normalised like the loss. The left
    side grows from 0 to infinity on ``(0, 2 / lambda_max)``, so the root is unique and never
    above the GD threshold; for ``B = n`` (no noise) the answer is ``2 / lambda_max``.
    """
    lam = np.asarray(spectrum, float)
    lam = lam[lam > 0]
    top = 2.0 / lam.max()
    c = (n - batch_size) / (batch_size * (n - 1)) if n > 1 else 0.0
    if c <= 0:
        return top
    k = lambda eta: eta * c * np.sum(lam / (2 - eta * lam)) - 1  # noqa: E731
    return brentq(k, 1e-12 * top, top * (1 - 1e-12), xtol=1e-14 * top, rtol=1e-12)


def second_moment_threshold(x, batch_size: int) -> float:
    """Return the eta at which SGD's second moment ``E[e e^T]`` stops contracting (linear model).

    With ``e = w - w*`` (realisable targets), one step is ``e' = (I - eta H_b) e``, ``H_b`` the
    batch Hessian. For a uniform ``B``-subset, ``E[H_b S H_b] = (1 - c_B) H S H + c_B A(S)`` with
    ``A(S) = (1/n) sum_i (x_i' S x_i) x_i x_i'``. The map ``M(S) = S - eta (HS + SH) + eta^2
    Q(S)`` preserves the PSD cone, so its spectral radius is its top eigenvalue, which crosses 1 at
    ``eta = 1 / mu_max``, ``mu_max`` the top generalised eigenvalue of ``Q S = mu (HS + SH)``
    (computed by Lanczos in the eigenbasis of ``H``, where ``HS + SH`` is diagonal). Treats steps
    as independent (exact for sampling with replacement's marginal; per-epoch shuffling adds
    within-epoch correlations).
    """
    x = np.asarray(x, float)
    n, d = x.shape
    c = (n - batch_size) / (batch_size * (n - 1)) if n > 1 else 0.0
    h, u = np.linalg.eigh(x.T @ x / n)
    xt = x @ u
    isq = 1.0 / np.sqrt(h[:, None] + h[None, :])

    def mv(s):
        s = isq * s.reshape(d, d)
        q = np.einsum("ij,jk,ik->i", xt, s, xt)
        out = (1 - c) * (h[:, None] * s * h[None, :]) + c * (xt.T * q) @ xt / n
        return (isq * out).ravel()

    op = LinearOperator((d * d, d * d), matvec=mv, dtype=float)
    v0 = np.eye(d).ravel()
    mu = eigsh(op, k=1, which="LA", v0=v0, tol=1e-10)[0][0]
    return float(1.0 / mu)


def _lin_problem(config: Config):
    rng = np.random.default_rng(config.seed)
    x = rng.normal(size=(config.lin_n, config.lin_dim)) / np.sqrt(config.lin_dim)
    y = (x @ rng.normal(size=config.lin_dim))[:, None]
    return x.astype(_fdt()), y.astype(_fdt())


def _lin_grid(config: Config, batch_size: int, trace: float, lmax: float) -> np.ndarray:
    ref = min(2.0 * batch_size / trace, 2.0 / lmax)
    k = np.arange(round(config.grid_lo * config.grid_per_octave),
                  round(config.grid_hi * config.grid_per_octave) + 1)  # fmt: skip
    return ref * 2.0 ** (k / config.grid_per_octave)


def _lin_point(config: Config, batch_size: int) -> dict[str, np.ndarray]:
    x, y = _lin_problem(config)
    net = models.mlp(config.lin_dim, 1, depth=0, width=1, bias=False, zero_readout=True)
    loss_fn = losses.make_loss_fn(net.apply, "mse", normalization=config.normalization)
    spec = np.linalg.eigvalsh(x.T.astype(float) @ x.astype(float) / config.lin_n)
    trace, lmax = float(spec.sum()), float(spec[-1])
    grid = _lin_grid(config, batch_size, trace, lmax)
    seeds = np.arange(config.lin_seeds)
    pstep = make_step(
        loss_fn,
        make_optimizer("gd", learning_rate=1.0),
        batch_size=None if batch_size == config.lin_n else batch_size,
        chunk_size=500,
    )
    res = train_population(
        pstep,
        net.init,
        (x, y),
        learning_rates=np.repeat(grid, seeds.size),
        seeds=np.tile(seeds, grid.size),
        num_steps=config.lin_steps,
        divergence_threshold=config.blowup * 0.5 * float(np.mean(y.astype(float) ** 2)),
    )
    div = res.diverged.reshape(grid.size, seeds.size)
    first = np.where(div.any(0), grid[np.argmax(div, axis=0)], np.nan)
    return {
        "spectrum": spec,
        "grid": grid,
        "diverged": div,
        "diverged_step": res.diverged_step.reshape(grid.size, seeds.size),
        "eta_div": first,
        "pred_kernel": np.asarray(noise_kernel_threshold(spec, batch_size, config.lin_n)),
        "pred_exact": np.asarray(second_moment_threshold(x, batch_size)),
    }


def _mlp_point(config: Config, batch_size: int) -> dict[str, np.ndarray]:
    ds = hd.digits(n=config.mlp_n, standardize="feature", dtype=_fdt())
    data = (ds.x, ds.y)
    net = models.mlp(64, 10, depth=config.mlp_depth, width=config.mlp_width,
                     activation=config.mlp_activation)  # fmt: skip
    loss_fn = losses.make_loss_fn(net.apply, "mse", normalization=config.normalization)
    e = config.every
    callbacks = [
        cbs.sharpness(loss_fn, every=e, num_iters=config.num_iters),
        cbs.traces(loss_fn, net.apply, every=e, num_matvecs=2, ntk_iters=2),
        cbs.full_loss(loss_fn, every=e),
    ]
    pstep = make_step(
        loss_fn,
        make_optimizer("gd", learning_rate=config.mlp_lr),
        batch_size=None if batch_size == config.mlp_n else batch_size,
        callbacks=callbacks,
        chunk_size=500,
    )
    res = train_population(
        pstep,
        net.init,
        data,
        learning_rates=np.full(config.mlp_seeds, config.mlp_lr),
        seeds=np.arange(config.mlp_seeds),
        num_steps=config.mlp_steps,
    )
    out = _OUT if config.normalization == "per_output" else 1  # ntk_trace is per-example
    rec = slice(0, None, e)
    return {
        "sharpness": res.metrics["sharpness"][:, rec],
        "ntk_trace": res.metrics["ntk_trace"][:, rec] / out,
        "full_loss": res.metrics["full_loss"][:, rec],
        "diverged": res.diverged,
    }


def points(config: Config) -> list[dict]:
    """One point per linear batch size, then one per MLP batch size (deterministic order)."""
    return [{"part": "linear", "batch_size": b} for b in config.lin_batch_sizes] + [
        {"part": "mlp", "batch_size": b} for b in config.mlp_batch_sizes
    ]


def run_point(config: Config, point: dict) -> dict[str, np.ndarray]:
    """Run one batch size of one part (no I/O)."""
    t0 = time.perf_counter()
    fn = _lin_point if point["part"] == "linear" else _mlp_point
    out = fn(config, int(point["batch_size"]))
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
    return Results(
        config=config,
        lin_batch_sizes=bs,
        lin_spectrum=spec,
        lin_trace=np.asarray(trace),
        lin_lmax=np.asarray(spec[-1]),
        lin_grid=np.stack([p["grid"] for p in lin]),
        lin_diverged=np.stack([p["diverged"] for p in lin]),
        lin_diverged_step=np.stack([p["diverged_step"] for p in lin]),
        lin_eta_div=np.stack([p["eta_div"] for p in lin]),
        lin_pred_trace=2.0 * bs / trace,
        lin_pred_kernel=np.stack([p["pred_kernel"] for p in lin]),
        lin_pred_exact=np.stack([p["pred_exact"] for p in lin]),
        mlp_batch_sizes=np.asarray(config.mlp_batch_sizes, int),
        mlp_record_steps=k,
        mlp_sharpness=stack("sharpness"),
        mlp_ntk_trace=stack("ntk_trace"),
        mlp_full_loss=stack("full_loss"),
        mlp_diverged=np.stack([p["diverged"] for p in mlp]) if mlp else np.zeros((0, 1), bool),
        elapsed=np.asarray(sum(float(p["seconds"]) for p in point_results)),
    )


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O); ``progress(done, total)`` after each batch size."""
    pts, out = points(config), []
    for i, p in enumerate(pts):
        out.append(run_point(config, p))
        if progress is not None:
            progress(i + 1, len(pts))
    return assemble(config, out)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load(save(r))`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Key numbers: measured divergence eta per batch size and its ratio to each prediction."""
    r = results
    out: dict[str, float | int | str | bool] = {"normalization": r.config.normalization}
    out["lin_trace_ntk"] = float(r.lin_trace)
    out["lin_lmax"] = float(r.lin_lmax)
    out["lin_2_over_lmax"] = 2.0 / float(r.lin_lmax)
    med = np.nanmedian(r.lin_eta_div, axis=1) if r.lin_eta_div.size else np.array([])
    for i, b in enumerate(r.lin_batch_sizes):
        out[f"lin_eta_div_B{b}"] = float(med[i])
        out[f"lin_ratio_trace_B{b}"] = float(med[i] / r.lin_pred_trace[i])
        out[f"lin_ratio_kernel_B{b}"] = float(med[i] / r.lin_pred_kernel[i])
        out[f"lin_ratio_exact_B{b}"] = float(med[i] / r.lin_pred_exact[i])
        out[f"lin_ratio_lmax_B{b}"] = float(med[i] * float(r.lin_lmax) / 2)
    eta = r.config.mlp_lr
    for i, b in enumerate(r.mlp_batch_sizes):
        n = r.config.mlp_n
        c = (n - b) / (b * (n - 1))
        s = np.nanmean(r.mlp_sharpness[i], axis=0)
        t = np.nanmean(r.mlp_ntk_trace[i], axis=0)
        out[f"mlp_sharpness_x_lr_final_B{b}"] = float(eta * s[-1])
        out[f"mlp_sharpness_x_lr_max_B{b}"] = float(eta * np.nanmax(s))
        out[f"mlp_noise_kernel_initial_B{b}"] = float(eta * c * t[0] / (2 * _OUT))
        out[f"mlp_noise_kernel_final_B{b}"] = float(eta * c * t[-1] / (2 * _OUT))
        out[f"mlp_diverged_B{b}"] = bool(np.any(r.mlp_diverged[i]))
    out["elapsed_s"] = float(r.elapsed)
    return out


def figures(results: Results) -> dict[str, Figure]:
    """The divergence learning rate against batch size; MLP sharpness and NTK trace over steps."""
    from ._stochastic_eos_plots import make_figures

    return make_figures(results)
