"""Numerics and drawing of the UV model: model, exact maps, simulators, doubling finders, figures.

Private helpers of :mod:`hessian_lab.studies.uv_model` (see that module for the derivations).
Notation: ``m`` is the output divisor (``sqrt(n)`` in NTP, ``n`` in muP), ``s2 = |x|^2 / m^2``,
``r = f - y``, ``Theta = (|x|^2 |v|^2 + |u x|^2) / m^2`` (the NTK), and the dimensionless
learning rate is ``kappa = eta |y| |x| / m``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# A run counts as diverged once eta * Theta or the loss (in units of y^2) passes this.
_BOUND = 1e12


def output_divisor(param: str, width: int) -> float:
    """``m`` in ``f = v . u x / m``: ``sqrt(n)`` for NTP, ``n`` for muP."""
    return float(np.sqrt(width)) if param == "ntp" else float(width)


def init_params(key: jax.Array, width: int, in_dim: int, dtype=jnp.float64) -> dict:
    """Unit-scale Gaussian ``u`` (n x d) and ``v`` (n); the init-scale knob multiplies both."""
    ku, kv = jax.random.split(key)
    return {
        "u": jax.random.normal(ku, (width, in_dim), dtype),
        "v": jax.random.normal(kv, (width,), dtype),
    }


def output(params: dict, x: jax.Array, m: float) -> jax.Array:
    """``f = v . u x / m``."""
    return params["v"] @ (params["u"] @ x) / m


def loss(params: dict, x: jax.Array, y: jax.Array, m: float) -> jax.Array:
    """``(f - y)^2 / 2`` on the single training example."""
    return 0.5 * (output(params, x, m) - y) ** 2


def ntk(params: dict, x: jax.Array, m: float) -> jax.Array:
    """``Theta = |grad f|^2 = (|x|^2 |v|^2 + |u x|^2) / m^2`` (= (|u|^2+|v|^2)|x|^2/m^2 if d=1)."""
    ux = params["u"] @ x
    return ((x @ x) * (params["v"] @ params["v"]) + ux @ ux) / m**2


def top_hessian_eig(f, theta, y, s2):
    """Exact top Hessian eigenvalue: ``Theta/2 + sqrt(Theta^2/4 + s2 (f - y)(3f - y))``."""
    disc = 0.25 * theta**2 + s2 * (f - y) * (3.0 * f - y)
    return 0.5 * theta + jnp.sqrt(jnp.maximum(disc, 0.0))


def map_step(state, eta, y, s2):
    """One GD step in function space: the exact map ``(f, Theta) -> (f', Theta')``."""
    f, theta = state
    r = f - y
    return (
        f - eta * r * theta + eta**2 * r**2 * s2 * f,
        theta + eta * r * s2 * (eta * r * theta - 4.0 * f),
    )


def gd_step(params, eta, x, y, m):
    """One GD step on the real model (gradient by autodiff)."""
    g = jax.grad(loss)(params, x, y, m)
    return jax.tree.map(lambda p, gp: p - eta * gp, params, g)


def _kind(kind: str):
    """(init(base, scale), step(state, eta, x, y, m, s2), observe(state, x, m)) for a level."""
    if kind == "params":
        return (
            lambda base, c: jax.tree.map(lambda a: c * a, base),
            lambda s, eta, x, y, m, s2: gd_step(s, eta, x, y, m),
            lambda s, x, m: (output(s, x, m), ntk(s, x, m)),
        )
    return (
        lambda base, c: (c**2 * base[0], c**2 * base[1]),  # f and Theta are quadratic in scale
        lambda s, eta, x, y, m, s2: map_step(s, eta, y, s2),
        lambda s, x, m: s,
    )


def _simulate(kind, base, etas, scales, x, y, m, *, num_steps, window):
    """Run GD for ``num_steps`` then record ``window`` more steps, vmapped over (eta, scale).

    One compilation serves a whole sweep: ``etas`` and ``scales`` are arrays of equal length B.
    A run whose ``eta Theta`` or loss leaves ``_BOUND`` (or turns non-finite) is frozen and
    flagged as diverged instead of overflowing.

    Returns a dict with ``f``, ``theta`` (B, window), ``diverged`` (B,), ``loss0``,
    ``theta0``, ``f0`` (B,), and ``max_loss`` (B,) over the whole run.
    """
    init, step, observe = _kind(kind)
    s2 = (x @ x) / m**2

    def one(eta, scale):
        s0 = init(base, scale)
        f0, th0 = observe(s0, x, m)
        loss0 = 0.5 * (f0 - y) ** 2

        def advance(carry):
            s, div, max_loss = carry
            new = step(s, eta, x, y, m, s2)
            f, th = observe(new, x, m)
            lo = 0.5 * (f - y) ** 2
            bad = ~(jnp.isfinite(f) & jnp.isfinite(th))
            bad = bad | (eta * th > _BOUND) | (lo > _BOUND * (y**2 + loss0))
            div_new = div | bad
            s = jax.tree.map(lambda a, b: jnp.where(div_new, a, b), s, new)
            max_loss = jnp.where(div_new, max_loss, jnp.maximum(max_loss, lo))
            return (s, div_new, max_loss)

        carry = (s0, jnp.asarray(False), loss0)
        carry = lax.fori_loop(0, num_steps, lambda i, c: advance(c), carry)

        def record(c, _):
            c = advance(c)
            return c, observe(c[0], x, m)

        carry, (fs, ths) = lax.scan(record, carry, None, length=window)
        return {
            "f": fs,
            "theta": ths,
            "diverged": carry[1],
            "max_loss": carry[2],
            "loss0": loss0,
            "f0": f0,
            "theta0": th0,
        }

    return jax.vmap(one)(etas, scales)


_simulate_jit = jax.jit(_simulate, static_argnames=("kind", "window"))


def simulate(kind, base, etas, scales, x, y, m, *, num_steps, window, bucket=16):
    """Jitted :func:`_simulate`, the batch padded to a multiple of ``bucket`` (fewer compiles).

    ``num_steps`` is traced, so runs of different lengths with the same padded batch size and
    window share one compilation.
    """
    etas, scales = jnp.asarray(etas), jnp.asarray(scales)
    b = etas.shape[0]
    pad = -b % bucket
    etas = jnp.concatenate([etas, jnp.zeros((pad,), etas.dtype)])  # eta = 0: a frozen run
    scales = jnp.concatenate([scales, jnp.ones((pad,), scales.dtype)])
    out = _simulate_jit(kind, base, etas, scales, x, y, m, num_steps=num_steps, window=window)
    return {k: v[:b] for k, v in out.items()}


@partial(jax.jit, static_argnames=("kind", "num_steps"))
def trajectory(kind, base, etas, scales, x, y, m, *, num_steps):
    """Every step's ``(f, Theta)`` (B, num_steps + 1), starting at the initialisation."""
    out = _simulate(kind, base, etas, scales, x, y, m, num_steps=0, window=num_steps)
    f = jnp.concatenate([out["f0"][:, None], out["f"]], axis=1)
    th = jnp.concatenate([out["theta0"][:, None], out["theta"]], axis=1)
    return f, th


def late_period(z: np.ndarray, *, tol: float, max_period: int) -> np.ndarray:
    """Smallest period ``p`` in 1, 2, 4, ..., ``max_period`` of late samples ``z`` (B, K, c).

    ``|z_{t+p} - z_t| <= tol (1 + |z_t|)`` must hold over the whole window; 0 means no such
    period (aperiodic: chaos, or a transient that has not settled).
    """
    period = np.zeros(z.shape[0], dtype=np.int64)
    p = max_period
    while p >= 1:
        gap = np.abs(z[:, p:] - z[:, :-p]) <= tol * (1.0 + np.abs(z[:, :-p]))
        period = np.where(gap.all(axis=(1, 2)), p, period)
        p //= 2
    return period


def bisect(period_fn, lo, hi, targets, *, num_iters: int):
    """Bisect brackets in parallel for the first eta whose late period exceeds ``targets``.

    ``period_fn(etas) -> periods`` runs all brackets in one call; a midpoint whose period is in
    ``1..target`` becomes the new lower end, anything else (longer, aperiodic, diverged) the
    upper end. Returns the bracket midpoints.
    """
    lo, hi, targets = (np.asarray(a, dtype=np.float64) for a in (lo, hi, targets))
    for _ in range(num_iters):
        mid = 0.5 * (lo + hi)
        per = period_fn(mid)
        below = (per >= 1) & (per <= targets)
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)


def brackets(grid: np.ndarray, period: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid brackets ``[grid[i-1], grid[i]]`` for the doublings 1->2, 2->4, ... (``num`` of them).

    For the doubling out of period p: from the first grid point where the period is p, ``i`` is
    the next one whose period is not in ``1..p`` (longer, aperiodic or diverged). Unsettled
    points before period p is first reached (slow convergence at a threshold) are skipped.
    Raises ValueError if the grid does not resolve one.
    """
    lo, hi = [], []
    for j in range(num):
        p = 2**j
        start = np.flatnonzero(period == p)
        bad = np.flatnonzero(~((period >= 1) & (period <= p)))
        bad = bad[bad > start[0]] if start.size else bad[:0]
        if bad.size == 0:
            raise ValueError(
                f"kappa_min/kappa_max: the grid does not bracket the period-{p} -> {2 * p} "
                f"doubling (periods on the grid: {sorted(set(period.tolist()))})"
            )
        lo.append(grid[bad[0] - 1])
        hi.append(grid[bad[0]])
    return np.array(lo), np.array(hi)


# --- the dimensionless map: z = (f / y, eta Theta), parameter k2 = kappa^2 ---------------------


def _dimless(z, k2):
    f, th = z[0], z[1]
    r = f - 1.0
    return jnp.stack([f - r * th + k2 * r * r * f, th + k2 * r * (r * th - 4.0 * f)])


def _iterate(z, k2, p):
    return lax.fori_loop(0, p, lambda i, z: _dimless(z, k2), z)


@jax.jit
def floquet(z, k2, p):
    """Newton-refine the period-``p`` orbit through ``z``; say whether it is a stable one.

    Cost: 30 Newton steps, each one forward-mode Jacobian of the p-fold map (2 x 2). The orbit
    counts as stable (below its flip) when Newton converged, it did not collapse onto a
    shorter orbit (e.g. the line of minima, a fixed point of every iterate), and its smallest
    real multiplier is above -1. Returns ``(orbit point, stable)``.
    """

    def newton(i, z):
        jac = jax.jacfwd(_iterate)(z, k2, p)
        return z - jnp.linalg.solve(jac - jnp.eye(2, dtype=z.dtype), _iterate(z, k2, p) - z)

    z = lax.fori_loop(0, 30, newton, z)
    jac = jax.jacfwd(_iterate)(z, k2, p)
    tr, det = jnp.trace(jac), jnp.linalg.det(jac)
    disc = 0.25 * tr**2 - det
    mu_min = jnp.where(disc >= 0, 0.5 * tr - jnp.sqrt(jnp.maximum(disc, 0.0)), 0.5 * tr)
    residual = jnp.max(jnp.abs(_iterate(z, k2, p) - z))
    collapse = jnp.max(jnp.abs(_iterate(z, k2, jnp.maximum(p // 2, 1)) - z))
    ok = jnp.isfinite(mu_min) & (residual < 1e-10) & ((p == 1) | (collapse > 1e-6))
    return z, ok & (mu_min > -1.0)


def floquet_doubling(z_lo, kappa_lo, kappa_hi, p, *, num_march=40, num_iters=50) -> float:
    """Locate the flip of the period-``p`` orbit (multiplier through -1) in kappa.

    ``z_lo`` is a point near the stable period-p orbit at ``kappa_lo``. The orbit is followed
    by continuation in ``num_march`` small steps up to ``kappa_hi`` (Newton from far away can
    jump to another orbit), then the first step where it stops being stable is bisected.
    NaN if the orbit is not stable at ``kappa_lo`` or still stable at ``kappa_hi``.
    """
    z, stable = floquet(jnp.asarray(z_lo), kappa_lo**2, p)
    if not bool(stable):
        return float("nan")
    lo = kappa_lo
    for hi in np.linspace(kappa_lo, kappa_hi, num_march + 1)[1:]:
        zm, stable = floquet(z, hi**2, p)
        if not bool(stable):
            break
        lo, z = hi, zm
    else:
        return float("nan")
    for _ in range(num_iters):
        mid = 0.5 * (lo + hi)
        zm, stable = floquet(z, mid**2, p)
        if bool(stable):
            lo, z = mid, zm
        else:
            hi = mid
    return 0.5 * (lo + hi)


@partial(jax.jit, static_argnames=("num_steps",))
def lyapunov(z0, k2, *, num_steps):
    """Largest Lyapunov exponent of the dimensionless map from ``z0`` (vmapped over k2)."""

    def one(z, k2):
        def body(carry, _):
            z, t, acc = carry
            z, t = jax.jvp(lambda z: _dimless(z, k2), (z,), (t,))
            norm = jnp.linalg.norm(t)
            return (z, t / norm, acc + jnp.log(norm)), None

        t0 = jnp.array([1.0, 1.0], dtype=z.dtype) / jnp.sqrt(2.0)
        (_, _, acc), _ = lax.scan(body, (z, t0, jnp.zeros((), z.dtype)), None, length=num_steps)
        return acc / num_steps

    return jax.vmap(one)(z0, k2)


# --- figures ----------------------------------------------------------------------------------


def draw_figures(results, regimes) -> dict[str, Figure]:
    """The study's figures from a ``Results`` (``Figure`` objects: no pyplot, no global state)."""
    r, c = results, results.config
    figs = {}
    fig = Figure(figsize=(10, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    cmap = ListedColormap(["black", "lightgray", "tab:blue", "tab:green", "tab:orange",
                           "tab:red", "tab:purple"])  # fmt: skip
    ax1.pcolormesh(r.phase_kappa, r.phase_scale, r.phase_regime, cmap=cmap, vmin=-0.5,
                   vmax=len(regimes) - 0.5, shading="nearest")  # fmt: skip
    ax1.legend(handles=[Patch(color=cmap(i), label=n) for i, n in enumerate(regimes)],
               fontsize=7, loc="lower left")  # fmt: skip
    im = ax2.pcolormesh(r.phase_kappa, r.phase_scale, r.phase_sharpness, shading="nearest",
                        cmap="viridis", vmin=0.0, vmax=4.0)  # fmt: skip
    fig.colorbar(im, ax=ax2, label=r"late $\eta\lambda_H$")
    for ax in (ax1, ax2):
        ax.set(xscale="log", yscale="log", xlabel=r"$\kappa=\eta|y||x|/m$",
               ylabel=r"init scale $\sigma$")  # fmt: skip
        ax.contour(r.phase_kappa, r.phase_scale, r.phase_sharpness0, levels=[2.0],
                   colors="white", linestyles="--")  # fmt: skip
        ax.axvline(1.0, color="white", lw=0.8)
    ax1.set_title(f"UV model ({c.param}, n={c.width}): regimes")
    ax2.set_title(r"late sharpness; dashed: $\eta\lambda_0=2$, line: $\kappa=1$")
    fig.tight_layout()
    figs["uv_phase_diagram"] = fig

    fig = Figure(figsize=(10, 7.5), dpi=100)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=False)
    k = r.bif_sharpness.shape[1]
    eta = r.kappa * float(r.eta_per_kappa)
    ax1.plot(np.repeat(eta, k), r.bif_sharpness.ravel(), ",", color="black", alpha=0.6)
    for kd in r.doubling_floquet:
        ax1.axvline(kd * float(r.eta_per_kappa), color="tab:red", lw=0.6, ls=":")
    ax1.axhline(2.0, color="gray", lw=0.6)
    ax1.set(xlabel=rf"$\eta$ (n={c.width}, {c.param})", ylabel=r"late $\eta\lambda_H$",
            title="function-space map; red: doubling points (Floquet)")  # fmt: skip
    ax2.plot(np.repeat(r.kappa, k), r.bif_sharpness.ravel(), ",", color="gray", label="map")
    for i, w in enumerate(r.param_widths):
        kp = np.repeat(r.param_kappa, k)
        ax2.plot(kp, r.param_sharpness[i].ravel(), ".", ms=1.5, label=f"params n={w}")
    ax2.set(xlabel=r"$\kappa$", ylabel=r"late $\eta\lambda_H$",
            title="real model (GD in parameter space) at several widths vs the map")  # fmt: skip
    ax2.legend(fontsize=7, markerscale=6)
    ax3.plot(r.kappa, r.bif_lyapunov, color="black", lw=0.8)
    ax3.axhline(0.0, color="gray", lw=0.6)
    ax3.set(xlabel=r"$\kappa$", ylabel="Lyapunov exponent")
    fig.tight_layout()
    figs["uv_bifurcation"] = fig

    P = r.traj_ntk_params.shape[0]
    fig = Figure(figsize=(2.6 * P, 4.6), dpi=100)
    axes = fig.subplots(2, P, squeeze=False)
    t = np.arange(r.traj_ntk_params.shape[1])
    for i in range(P):
        lab = rf"$\kappa$={c.trajectory_kappas[i]:g}, $\sigma$={c.trajectory_scales[i]:g}"
        a, b = axes[0, i], axes[1, i]
        a.semilogy(t, r.traj_loss[i], color="black", lw=0.8, label="params")
        a.semilogy(t[::5], r.traj_loss_map[i, ::5], "o", ms=2, color="tab:orange", label="map")
        a.set_title(lab, fontsize=9)
        b.plot(t, r.traj_sharpness[i], lw=0.8, label=r"$\eta\lambda_H$")
        b.plot(
            t[::5],
            r.traj_ntk_map[i, ::5],
            "o",
            ms=2,
            label=r"$\eta\Theta$ (map)",
            color="tab:orange",
        )
        b.axhline(2.0, color="gray", lw=0.6)
        b.set(xlabel="step", ylim=(0, 5))
    axes[0, 0].set_ylabel("loss / $y^2$")
    axes[1, 0].set_ylabel("curvature x eta")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    figs["uv_trajectories"] = fig
    return figs
