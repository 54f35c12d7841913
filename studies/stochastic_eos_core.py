"""The stochastic-EoS study's numerics: the threshold formulas and the two kinds of sweep point.

Split from :mod:`hessian_lab.studies.stochastic_eos` to keep both under 400 lines: this module
holds the theory (the batch-noise factor, the noise-kernel and second-moment thresholds) and the
training of one point (a learning-rate grid of linear-regression SGD runs, or an MLP on digits);
the study module holds its contract (Config, summary, verdict). Functions here take any object
with the study Config's fields.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq
from scipy.sparse.linalg import LinearOperator, eigsh

from hessian_lab import callbacks, losses, models, population
from hessian_lab import data as hd
from hessian_lab.optim import make_optimizer

from . import kit
from . import problems_user as pu

__all__ = ["OUTPUTS", "batch_noise", "lin_grid", "lin_point", "lin_problem", "mlp_point"]
__all__ += ["mlp_curves", "noise_kernel_threshold", "point_steps", "second_moment_threshold"]
__all__ += ["MLP_FIELDS", "batch_sharpness_verdict", "check_mlp", "mlp_name", "window_mean"]

OUTPUTS = 10  # digits classes: outputs of the MLP
MLP_FIELDS = ("mlp_depth", "mlp_width", "mlp_activation")  # unused with problem set


def batch_noise(batch_size: int, n: int) -> float:
    """``c_B = (n - B) / (B (n - 1))``: the gradient-noise factor of a uniform ``B``-subset of
    ``n`` examples (epoch shuffling; ``~ 1/B - 1/n``, 0 at ``B = n``)."""
    return (n - batch_size) / (batch_size * (n - 1)) if n > 1 else 0.0


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
    c = batch_noise(batch_size, n)
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
    c = batch_noise(batch_size, n)
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


def _fdt():
    return np.dtype(jnp.result_type(float))


def lin_problem(c) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs ``x ~ N(0, I_d / d)`` (``lin_n`` x ``lin_dim``), realisable targets."""
    rng = np.random.default_rng(c.seed)
    x = rng.normal(size=(c.lin_n, c.lin_dim)) / np.sqrt(c.lin_dim)
    y = (x @ rng.normal(size=c.lin_dim))[:, None]
    return x.astype(_fdt()), y.astype(_fdt())


def lin_grid(c, batch_size: int, trace: float, lmax: float) -> np.ndarray:
    """The learning rates swept at ``batch_size``: a log2 grid around min(2B/tr K, 2/lambda_max)."""
    ref = min(2.0 * batch_size / trace, 2.0 / lmax)
    lo, hi = round(c.grid_lo * c.grid_per_octave), round(c.grid_hi * c.grid_per_octave)
    return ref * 2.0 ** (np.arange(lo, hi + 1) / c.grid_per_octave)


def point_steps(c, point: dict) -> int:
    """Training steps of one sweep point, summed over its members (for progress)."""
    if point["part"] == "linear":
        members = round(c.grid_hi * c.grid_per_octave) - round(c.grid_lo * c.grid_per_octave) + 1
        return members * c.lin_seeds * c.lin_steps
    return c.mlp_seeds * c.mlp_steps


def lin_point(c, batch_size: int, *, progress=None) -> dict[str, np.ndarray]:
    """SGD on the linear problem over the grid x ``lin_seeds`` members (one compiled step)."""
    x, y = lin_problem(c)
    net = models.mlp(c.lin_dim, 1, depth=0, width=1, bias=False, zero_readout=True)
    loss_fn = losses.make_loss_fn(net.apply, "mse", normalization=c.normalization)
    spec = np.linalg.eigvalsh(x.T.astype(float) @ x.astype(float) / c.lin_n)
    grid = lin_grid(c, batch_size, float(spec.sum()), float(spec[-1]))
    seeds = np.arange(c.lin_seeds)
    pstep = population.make_step(
        loss_fn,
        make_optimizer("gd", learning_rate=1.0),
        batch_size=None if batch_size == c.lin_n else batch_size,
        chunk_size=500,
    )
    res = population.train_population(
        pstep,
        net.init,
        (x, y),
        learning_rates=np.repeat(grid, seeds.size),
        seeds=np.tile(seeds, grid.size),
        num_steps=c.lin_steps,
        divergence_threshold=c.blowup * 0.5 * float(np.mean(y.astype(float) ** 2)),
        progress=progress,
    )
    div = res.diverged.reshape(grid.size, seeds.size)
    first = np.where(div.any(0), grid[np.argmax(div, axis=0)], np.nan)
    return {
        "spectrum": spec,
        "grid": grid,
        "diverged": div,
        "diverged_step": res.diverged_step.reshape(grid.size, seeds.size),
        "eta_div": first,
        "pred_kernel": np.asarray(noise_kernel_threshold(spec, batch_size, c.lin_n)),
        "pred_exact": np.asarray(second_moment_threshold(x, batch_size)),
    }


def mlp_name(c) -> str:
    """A reader's name for the MLP part's network: "MLP", or the user's problem."""
    return pu.label(c) if c.problem else "MLP"


def user_problem(c):
    """The user's problem on its first ``mlp_n`` examples (its ``seed`` argument: 0)."""
    return pu.user_problem(c.problem, data=c.data, args=c.problem_args, seed=0, n=c.mlp_n,
                           study="stochastic_eos")  # fmt: skip


def check_mlp(c) -> None:
    """The MLP part's checks before any work (``stochastic_eos.check_inputs``)."""
    kit.need(bool(c.problem) or c.data.startswith("digits"), c, "data",
             "digits unless problem is set (the built-in MLP trains on digits)")  # fmt: skip
    kit.need(not c.problem or bool(c.mlp_batch_sizes), c, "mlp_batch_sizes",
             "at least one batch size with problem set (the MLP part trains it)")  # fmt: skip
    if not c.mlp_batch_sizes:
        return
    if c.problem:
        prob = pu.checked(c, user_problem, "mlp_n")
        pu.check_seeds_vary(prob, c, "mlp_seeds")
        n, net = prob.data[0].shape[0], prob.model
        kit.need(max(c.mlp_batch_sizes) <= n, c, "mlp_batch_sizes",
                 f"at most the {n} examples of problem")  # fmt: skip
    else:
        net = models.mlp(64, OUTPUTS, depth=c.mlp_depth, width=c.mlp_width,
                         activation=c.mlp_activation)  # fmt: skip
    dim = kit.num_params(net)
    kit.check_budget(c, "num_iters", dim, "the MLP's number of parameters")
    kit.check_memory(c, "problem" if c.problem else "mlp_width", dim, 8 + c.num_iters)


def mlp_point(c, batch_size: int, *, progress=None) -> dict[str, np.ndarray]:
    """SGD on the digits MLP (or the user's problem) at ``mlp_lr``: sharpness, NTK trace and full
    loss every ``every``; batch sharpness every ``batch_sharpness_every`` steps, averaged over
    each window of ``every``."""
    if c.problem:
        net, loss_fn, (x, y) = user_problem(c)[:3]
    else:
        ds = hd.digits(n=c.mlp_n, standardize="feature", dtype=_fdt())
        net = models.mlp(64, OUTPUTS, depth=c.mlp_depth, width=c.mlp_width,
                         activation=c.mlp_activation)  # fmt: skip
        loss_fn = losses.make_loss_fn(net.apply, "mse", normalization=c.normalization)
        x, y = ds.x, ds.y
    n, e = x.shape[0], c.every
    cbs = [
        callbacks.sharpness(loss_fn, every=e, num_iters=c.num_iters),
        callbacks.traces(loss_fn, net.apply, every=e, num_matvecs=2, ntk_iters=2),
        callbacks.full_loss(loss_fn, every=e),
        callbacks.batch_sharpness(loss_fn, every=c.batch_sharpness_every),
    ]
    pstep = population.make_step(
        loss_fn,
        make_optimizer("gd", learning_rate=c.mlp_lr),
        batch_size=None if batch_size == n else batch_size,
        callbacks=cbs,
        chunk_size=500,
    )
    res = population.train_population(
        pstep,
        net.init,
        (x, y),
        learning_rates=np.full(c.mlp_seeds, c.mlp_lr),
        seeds=np.arange(c.mlp_seeds),
        num_steps=c.mlp_steps,
        progress=progress,
    )
    out = OUTPUTS if c.normalization == "per_output" and not c.problem else 1  # per-example
    rec = slice(0, None, e)
    return {
        "sharpness": res.metrics["sharpness"][:, rec],
        "ntk_trace": res.metrics["ntk_trace"][:, rec] / out,
        "full_loss": res.metrics["full_loss"][:, rec],
        "batch_sharpness": window_mean(res.metrics["batch_sharpness"], e),
        "diverged": res.diverged,
    }


def window_mean(values, every: int) -> np.ndarray:
    """Mean of ``values`` (members, steps; NaN off-cadence) over each window of ``every`` steps
    that starts at a record step ``0, every, 2 every, ...``: shape (members, records)."""
    v = np.asarray(values, float)
    k = -(-v.shape[1] // every)
    pad = np.full((v.shape[0], k * every - v.shape[1]), np.nan)
    windows = np.concatenate([v, pad], axis=1).reshape(v.shape[0], k, every)
    with np.errstate(invalid="ignore"):
        count = np.sum(np.isfinite(windows), axis=2)
        total = np.nansum(windows, axis=2)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def mlp_curves(r) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per MLP batch size, the mean over members that did not diverge (NaN if none did not) of
    the sharpness, the noise kernel ``eta c_B tr(K) / (2o)``, the loss and the batch sharpness:
    four (M, K) arrays."""
    c = r.config
    shape = (r.mlp_batch_sizes.size, r.mlp_record_steps.size)
    curves = [np.full(shape, np.nan) for _ in range(4)]
    for i, b in enumerate(r.mlp_batch_sizes):
        ok = ~r.mlp_diverged[i]
        if ok.any():
            cb = batch_noise(int(b), c.mlp_n)
            o = np.nan if c.problem else OUTPUTS  # the kernel is the digits MLP's (study doc)
            curves[0][i] = r.mlp_sharpness[i][ok].mean(0)
            curves[1][i] = c.mlp_lr * cb * r.mlp_ntk_trace[i][ok].mean(0) / (2 * o)
            curves[2][i] = r.mlp_full_loss[i][ok].mean(0)
            curves[3][i] = r.mlp_batch_sharpness[i][ok].mean(0)
    return tuple(curves)


def batch_sharpness_verdict(key: str, s: dict, *, name: str = "MLP") -> str:
    """Batch sharpness at 2/eta (within 15%) with lambda_max below it, once SGD is at the edge."""
    bs, lm = s["mlp_batch_sharpness_x_lr"][key], s["mlp_sharpness_x_lr_late"][key]
    at_edge = bs >= 1.6  # below that the run has not sharpened up to the stochastic edge
    return kit.compare(
        f"{name} {key}: eta * batch sharpness, last quarter (eta * lambda_max {kit.fmt(lm)})",
        bs,
        "Andreyev & Beneventano 2024",
        "2 within 15%, lambda_max below"
        + ("" if at_edge else "; this run stays below the edge (not judged)"),
        ok=(abs(bs / 2 - 1) <= 0.15 and lm < 2) if at_edge else None,
    )
