"""Numerics of the UV-model study: the exact function-space map, simulators, doubling finders.

The model is :func:`hessian_lab.models.uv`, ``f = v . u x / m`` (``m = sqrt(n)`` in NTP, ``n`` in
muP); this module holds what the study derives from it (derivations in
:mod:`hessian_lab.studies.uv_model` and ``docs/studies/uv_model.md``):

* :func:`observe` -- the real model's output ``f`` and NTK ``Theta = |grad f|^2`` (autodiff);
* :func:`top_hessian_eig` -- the exact top Hessian eigenvalue from ``(f, Theta)``;
* :func:`map_step` -- one GD step in function space, the exact map ``(f, Theta) -> (f', Theta')``;
* :func:`simulate`, :func:`trajectory` -- GD on the real model or the map, vmapped over (eta, sigma);
* :func:`late_period`, :func:`brackets`, :func:`bisect` -- period doublings from late orbits;
* :func:`floquet`, :func:`floquet_doubling`, :func:`lyapunov` -- the dimensionless map's orbits.

Notation: ``s2 = |x|^2 / m^2``, ``r = f - y``, ``kappa = eta |y| |x| / m``. (Its own module: the
study with these would pass 400 lines.)

Example:
  >>> import jax, jax.numpy as jnp
  >>> from hessian_lab import models
  >>> from hessian_lab.studies import uv_model_core as core
  >>> params = models.uv(1, 4).init(jax.random.key(0))
  >>> f, theta = core.observe(params, jnp.ones(1), "ntp")
  >>> bool(theta > 0)
  True
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hessian_lab import models, tree

__all__ = ["BOUND", "LEVELS", "REGIMES", "Setup", "bisect", "brackets", "floquet"]
__all__ += ["floquet_doubling", "late_period", "late_window", "level_gap", "lyapunov", "map_step"]
__all__ += ["observe", "output_divisor", "regime", "setup", "simulate", "simulate_batch"]
__all__ += ["top_hessian_eig", "trajectory"]

# A run counts as diverged once eta * Theta or the loss (in units of y^2) passes this.
BOUND = 1e12
LEVELS = ("params", "map")
REGIMES = (
    "diverged",
    "lazy",
    "progressive sharpening",
    "sharpness reduction",
    "catapult",
    "edge of stability",
    "chaos",
)


def output_divisor(param: str, width: int) -> float:
    """``m`` in ``f = v . u x / m``: ``sqrt(n)`` for NTP, ``n`` for muP (as ``models.uv``)."""
    return float(np.sqrt(width)) if param == "ntp" else float(width)


def _value_and_grad(params: dict, x: jax.Array, param: str):
    net = models.uv(x.shape[-1], params["u"].shape[0], param=param)
    return jax.value_and_grad(lambda p: net.apply(p, x)[0])(params)


def observe(params: dict, x: jax.Array, param: str) -> tuple[jax.Array, jax.Array]:
    """``(f, Theta)`` of ``models.uv`` at one input ``x`` (d,): its output and ``|grad f|^2``."""
    f, g = _value_and_grad(params, x, param)
    return f, tree.vdot(g, g)


class Setup(NamedTuple):
    """One width's problem: unit-scale params, the map's start ``(f0, Theta0)``, the example."""

    params: dict
    start: tuple
    x: jax.Array
    y: jax.Array
    s2: float  # |x|^2 / m^2
    eta_per_kappa: float  # m / (|x| |y|): eta = kappa * eta_per_kappa


def setup(config, width: int) -> Setup:
    """The input (norm ``x_norm``, a random direction) and the unit-scale ``models.uv`` init.

    ``config`` has the UV study's ``param``, ``in_dim``, ``x_norm``, ``y`` and ``seed``; the key
    is ``seed`` folded with ``width``; arrays are float64 (call under ``enable_x64``).
    """
    param, in_dim, x_norm, y = config.param, config.in_dim, config.x_norm, config.y
    seed = config.seed
    kx, kp = jax.random.split(jax.random.fold_in(jax.random.key(seed), width))
    x = jax.random.normal(kx, (in_dim,), jnp.float64)
    x = x_norm * x / jnp.linalg.norm(x)
    params = models.uv(in_dim, width, param=param).init(kp)
    m = output_divisor(param, width)
    start = observe(params, x, param)
    return Setup(params, start, x, jnp.asarray(y, jnp.float64), x_norm**2 / m**2,
                 m / (x_norm * abs(y)))  # fmt: skip


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


def _level(level: str, x, y, s2, param: str):
    """``(init(base, scale), step(state, eta), observe(state) -> (f, Theta))`` of a level.

    ``"params"``: the state is ``(params, f, Theta, grad f)``, so each GD step
    ``theta <- theta - eta (f - y) grad f`` costs one gradient. ``"map"``: ``(f, Theta)``, and
    ``f``, ``Theta`` are quadratic in the init scale.
    """
    if level == "params":

        def measured(p):
            f, g = _value_and_grad(p, x, param)
            return (p, f, tree.vdot(g, g), g)

        def step(s, eta):
            p, f, _, g = s
            return measured(jax.tree.map(lambda a, b: a - eta * (f - y) * b, p, g))

        return (lambda base, c: measured(tree.scale(base, c))), step, lambda s: (s[1], s[2])
    return (
        lambda base, c: (c**2 * base[0], c**2 * base[1]),
        lambda s, eta: map_step(s, eta, y, s2),
        lambda s: s,
    )


def _simulate(level, base, etas, scales, x, y, s2, *, param, num_steps, window):
    """Run GD ``num_steps`` steps, then record ``window`` more; vmapped over (eta, scale).

    Jitted; ``num_steps`` is traced, so runs of any length with the same batch size and window share
    one compilation (see :func:`simulate`, which pads the batch). ``level`` is ``"params"`` (``base``:
    unit-scale ``models.uv`` params, scaled by each ``scale``) or ``"map"`` (``base = (f0, Theta0)``
    at unit scale). A run whose ``eta Theta`` or loss leaves :data:`BOUND` (or turns non-finite) is
    frozen and flagged as diverged instead of overflowing.

    Returns a dict with ``f``, ``theta`` (B, window), ``diverged`` (B,), ``loss0``, ``theta0``,
    ``f0`` (B,), and ``max_loss`` (B,) over the whole run.
    """
    init, step, obs = _level(level, x, y, s2, param)

    def one(eta, scale):
        s0 = init(base, scale)
        f0, th0 = obs(s0)
        loss0 = 0.5 * (f0 - y) ** 2

        def advance(carry):
            s, div, max_loss = carry
            new = step(s, eta)
            f, th = obs(new)
            lo = 0.5 * (f - y) ** 2
            bad = ~(jnp.isfinite(f) & jnp.isfinite(th))
            bad = bad | (eta * th > BOUND) | (lo > BOUND * (y**2 + loss0))
            div_new = div | bad
            s = jax.tree.map(lambda a, b: jnp.where(div_new, a, b), s, new)
            max_loss = jnp.where(div_new, max_loss, jnp.maximum(max_loss, lo))
            return (s, div_new, max_loss)

        carry = (s0, jnp.asarray(False), loss0)
        carry = lax.fori_loop(0, num_steps, lambda i, c: advance(c), carry)

        def record(c, _):
            c = advance(c)
            return c, obs(c[0])

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


simulate_batch = jax.jit(_simulate, static_argnames=("level", "param", "window"))


def simulate(level, base, etas, scales, x, y, s2, *, param, num_steps, window, bucket=16):
    """:data:`simulate_batch` with the batch padded to a multiple of ``bucket`` (fewer compiles).

    ``param`` ("ntp" or "mup") picks the ``models.uv`` form of the ``"params"`` level; ``s2`` is
    the map's ``|x|^2 / m^2`` for the same form.
    """
    etas, scales = jnp.asarray(etas), jnp.asarray(scales)
    b = etas.shape[0]
    pad = -b % bucket
    etas = jnp.concatenate([etas, jnp.zeros((pad,), etas.dtype)])  # eta = 0: a frozen run
    scales = jnp.concatenate([scales, jnp.ones((pad,), scales.dtype)])
    out = simulate_batch(level, base, etas, scales, x, y, s2, param=param, num_steps=num_steps,
                         window=window)  # fmt: skip
    return {k: v[:b] for k, v in out.items()}


@partial(jax.jit, static_argnames=("level", "param", "num_steps"))
def trajectory(level, base, etas, scales, x, y, s2, *, param, num_steps):
    """Every step's ``(f, Theta)`` (B, num_steps + 1), starting at the initialisation."""
    out = _simulate(level, base, etas, scales, x, y, s2, param=param, num_steps=0,
                    window=num_steps)  # fmt: skip
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


def late_window(out: dict, etas, y: float, s2: float, *, tol: float, max_period: int):
    """``(eta lambda_H, eta Theta, period)`` of :func:`simulate`'s late windows; NaN, -1: diverged."""
    f, th, div = (np.asarray(out[k]) for k in ("f", "theta", "diverged"))
    e = np.asarray(etas)[:, None]
    lam = e * np.asarray(top_hessian_eig(f, th, y, s2))
    per = late_period(np.stack([f / y, e * th], axis=-1), tol=tol, max_period=max_period)
    nan = np.where(div[:, None], np.nan, 1.0)  # a diverged run has no late orbit
    return lam * nan, e * th * nan, np.where(div, -1, per)


def level_gap(params_out: dict, map_out: dict, ok: np.ndarray, y: float) -> float:
    """Largest relative (f, Theta) gap of the real model's late window from the map's where ``ok``.

    Compare only where both orbits are periodic and before chaos: a chaotic transient amplifies
    rounding and can land on the same periodic window at another phase.
    """
    df = np.abs(np.asarray(params_out["f"]) - np.asarray(map_out["f"])) / abs(y)
    th = np.asarray(map_out["theta"])
    dt = np.abs(np.asarray(params_out["theta"]) - th) / np.abs(th)
    return float(np.max(np.where(ok[:, None], np.maximum(df, dt), 0.0)))


def regime(period, loss_ratio, lam_ratio) -> np.ndarray:
    """Index into :data:`REGIMES` from the late period, ``max L / L0`` and ``lambda_T / lambda_0``.

    Diverged (period -1); period >= 2: edge of stability; aperiodic (0): chaos; else a catapult
    (loss ratio > 1.05), progressive sharpening (lambda ratio > 1.05), sharpness reduction
    (< 0.95), or lazy.
    """
    code = np.where(lam_ratio > 1.05, 2, np.where(lam_ratio < 0.95, 3, 1))
    code = np.where(loss_ratio > 1.05, 4, code)
    code = np.where(period >= 2, 5, np.where(period == 0, 6, code))
    return np.where(period < 0, 0, code)


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
