"""Reproduce the UV model's sharpness dynamics: catapults, edge of stability, route to chaos.

Kalra, He & Barkeshli 2023 (arXiv 2311.02076). The model is ``f = v . u x / m`` with
``u`` (n x d), ``v`` (n), one example ``(x, y)``, loss ``(f - y)^2 / 2`` and plain GD with step
``eta``. NTP: ``m = sqrt(n)``, ``u, v ~ N(0, sigma^2)``. muP: ``m = n``, same init, and the GD
step is taken ``n`` times larger (``eta = n eta_hat``, ``eta_hat`` width-independent), so the
features ``u x`` move by O(1) and the initial output is O(1/sqrt(n)). ``sigma`` is the
init-scale knob. Both forms are the same two maps below with ``s2 = |x|^2 / m^2``.

Exact function-space map. Only ``u x`` moves (GD updates ``u`` by multiples of ``v x^T``), so
write ``p = u x / |x|``, ``f = s v.p``, ``Theta = |grad f|^2 = s^2 (|v|^2 + |p|^2)
= (|x|^2 |v|^2 + |u x|^2) / m^2`` (the NTK; equal to ``(|u|^2 + |v|^2)|x|^2 / m^2`` for d = 1),
``s = |x| / m``. One step is ``p' = p - k v, v' = v - k p`` with ``k = eta r s``, ``r = f - y``::

    f'     = f - eta r Theta + eta^2 r^2 s2 f
    Theta' = Theta + eta r s2 (eta r Theta - 4 f)

(exact, any width, no assumption on the init; for d > 1 the frozen part of ``u`` orthogonal to
``x`` only adds a constant to ``(|u|^2 + |v|^2)|x|^2/m^2``).

Exact top Hessian eigenvalue. ``H = grad f grad f^T + r grad^2 f`` with ``grad^2 f = s [[0, I],
[I, 0]]`` on ``(p, v)``. On ``span{(v+p, v+p), (v-p, p-v)}`` H is the 2 x 2 matrix with trace
``Theta`` and determinant ``-s2 r (2f + r)``; every other eigenvalue is ``+-s r`` or 0, and
never larger (``Theta >= 2 s |f|``). Hence::

    lambda_H = Theta / 2 + sqrt(Theta^2 / 4 + s2 (f - y)(3 f - y))

which is ``Theta`` at the minimum ``f = y`` and differs from it elsewhere.

Dimensionless combination. With ``F = f / y`` and ``T = eta Theta`` the map becomes
``F' = F - (F-1) T + kappa^2 (F-1)^2 F``, ``T' = T + kappa^2 (F-1)((F-1) T - 4F)`` with the single
parameter ``kappa = eta |y| |x| / m`` (NTP: ``eta |y| |x| / sqrt(n)``; muP: ``eta_hat |y| |x|``).
Minima ``F = 1`` have ``T >= 2 kappa`` and are stable iff ``T < 2``: for ``kappa < 1`` GD can
settle (period 1); for ``kappa > 1`` no minimum is stable and the late-time orbit lives on the
edge of stability, doubling its period on the way to chaos as ``kappa`` grows.

What ``run`` measures: a phase diagram over (kappa, sigma) on the real model, a bifurcation
diagram of late-time ``eta lambda_H`` against eta on the map, the same sweep in parameter space
at several widths, doubling points by bisection on both levels (late-period detection), and the
flip points of the map's periodic orbits by Newton + Floquet multipliers (precise).

Example:
  >>> from hessian_lab.studies import uv_model
  >>> r = uv_model.run(uv_model.TINY)  # doctest: +SKIP
  >>> uv_model.summary(r)["kappa_doubling_2"]  # doctest: +SKIP
  1.236...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies._results import load_results, save_results

from . import _uv_maps as um

__all__ = ["DEFAULT", "NAME", "REGIMES", "TINY", "Config", "Results", "figures", "load", "run"]
__all__ += ["save", "summary"]

NAME = "uv_model"
REGIMES = (
    "diverged",
    "lazy",
    "progressive sharpening",
    "sharpness reduction",
    "catapult",
    "edge of stability",
    "chaos",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the UV study. Learning rates are given as ``kappa = eta |y| |x| / m``."""

    param: Literal["ntp", "mup"] = "ntp"
    width: int = 16  # width of the phase diagram, main bifurcation run and trajectories
    widths: tuple[int, ...] = (16, 64, 256)  # parameter-space bifurcation widths
    in_dim: int = 1
    x_norm: float = 1.0
    y: float = 1.0
    seed: int = 0
    init_scale: float = 0.05  # sigma for the bifurcation runs (small initial output)
    kappa_min: float = 0.9
    kappa_max: float = 2.05
    num_kappa: int = 1151  # function-space bifurcation grid
    num_kappa_params: int = 111  # parameter-space bifurcation grid (per width)
    num_steps: int = 20000  # transient before the late-time window
    window: int = 128
    max_period: int = 32
    period_tol: float = 1e-7
    num_doublings: int = 5
    bisect_iters: int = 24
    lyapunov_steps: int = 4000
    phase_kappa_min: float = 0.01
    phase_kappa_max: float = 3.0
    phase_num_kappa: int = 49
    phase_scale_min: float = 0.02
    phase_scale_max: float = 3.0
    phase_num_scale: int = 41
    phase_steps: int = 4000
    trajectory_kappas: tuple[float, ...] = (0.5, 0.015, 0.3, 1.1, 1.27, 1.4)
    trajectory_scales: tuple[float, ...] = (0.05, 2.5, 1.0, 0.05, 0.05, 0.05)
    trajectory_steps: int = 150

    def __post_init__(self):
        def need(ok: bool, field: str, allowed: str):
            if not ok:
                raise ValueError(f"{field}: must be {allowed}, got {getattr(self, field)!r}")

        need(self.param in ("ntp", "mup"), "param", "'ntp' or 'mup'")
        for f in ("width", "in_dim", "num_kappa", "num_kappa_params", "phase_num_kappa"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "an int >= 1")
        need(len(self.widths) >= 1 and all(int(w) >= 1 for w in self.widths), "widths", ">= 1")
        for f in ("x_norm", "init_scale", "kappa_min", "phase_kappa_min", "phase_scale_min"):
            need(np.isfinite(getattr(self, f)) and getattr(self, f) > 0, f, "a positive number")
        need(np.isfinite(self.y) and self.y != 0, "y", "a non-zero number")
        need(self.kappa_max > self.kappa_min, "kappa_max", "> kappa_min")
        need(self.phase_kappa_max > self.phase_kappa_min, "phase_kappa_max", "> phase_kappa_min")
        need(self.phase_scale_max > self.phase_scale_min, "phase_scale_max", "> phase_scale_min")
        need(self.phase_num_scale >= 1, "phase_num_scale", ">= 1")
        need(self.max_period >= 1 and self.max_period & (self.max_period - 1) == 0,
             "max_period", "a power of two")  # fmt: skip
        need(self.window >= 2 * self.max_period, "window", ">= 2 * max_period")
        need(1 <= self.num_doublings and 2**self.num_doublings <= self.max_period,
             "num_doublings", ">= 1 with 2**num_doublings <= max_period")  # fmt: skip
        for f in ("num_steps", "bisect_iters", "lyapunov_steps", "phase_steps"):
            need(getattr(self, f) >= 1, f, ">= 1")
        need(self.trajectory_steps >= 1, "trajectory_steps", ">= 1")
        need(0 < self.period_tol < 1, "period_tol", "in (0, 1)")
        need(len(self.trajectory_kappas) == len(self.trajectory_scales) >= 1,
             "trajectory_scales", "as long as trajectory_kappas (>= 1)")  # fmt: skip


DEFAULT = Config()
TINY = Config(
    width=8,
    widths=(8,),
    kappa_min=0.95,
    kappa_max=1.32,
    num_kappa=75,
    num_kappa_params=16,
    num_steps=3000,
    window=64,
    max_period=16,
    num_doublings=3,
    bisect_iters=16,
    lyapunov_steps=500,
    phase_kappa_min=0.03,
    phase_num_kappa=8,
    phase_num_scale=6,
    phase_steps=600,
    trajectory_steps=60,
)


@dataclasses.dataclass
class Results:
    """Arrays of one run (shapes: K grid, W widths, D doublings, S x Kp phase grid, window k)."""

    config: Config
    kappa: np.ndarray  # (K,) map bifurcation grid; eta = kappa * eta_per_kappa
    eta_per_kappa: np.ndarray  # () m / (|x| |y|) at the main width
    bif_sharpness: np.ndarray  # (K, k) late eta * lambda_H on the map (NaN if diverged)
    bif_ntk: np.ndarray  # (K, k) late eta * Theta
    bif_period: np.ndarray  # (K,) 1, 2, 4, ...; 0 aperiodic; -1 diverged
    bif_lyapunov: np.ndarray  # (K,) largest Lyapunov exponent of the late orbit
    param_widths: np.ndarray  # (W,)
    param_kappa: np.ndarray  # (Kp,)
    param_sharpness: np.ndarray  # (W, Kp, k) late eta * lambda_H, real model
    param_period: np.ndarray  # (W, Kp)
    level_gap: np.ndarray  # (W,) max relative (f, Theta) gap params vs map, before chaos
    doubling_map: np.ndarray  # (W, D) kappa of the doublings, bisection on the map
    doubling_params: np.ndarray  # (W, D) the same on the real model
    doubling_floquet: np.ndarray  # (D,) flip points of the map's orbits (multiplier -1)
    phase_kappa: np.ndarray  # (Kp,)
    phase_scale: np.ndarray  # (S,)
    phase_sharpness0: np.ndarray  # (S, Kp) eta * lambda_H at init
    phase_sharpness: np.ndarray  # (S, Kp) late eta * lambda_H
    phase_period: np.ndarray  # (S, Kp)
    phase_regime: np.ndarray  # (S, Kp) index into REGIMES
    phase_loss_ratio: np.ndarray  # (S, Kp) max_t L_t / L_0
    traj_ntk_params: np.ndarray  # (P, T+1) eta * Theta along GD, real model
    traj_ntk_map: np.ndarray  # (P, T+1) the same from the map
    traj_sharpness: np.ndarray  # (P, T+1) eta * lambda_H (real model)
    traj_loss: np.ndarray  # (P, T+1) loss / y^2 (real model)
    traj_loss_map: np.ndarray  # (P, T+1)
    elapsed: np.ndarray  # () seconds


def _setup(config: Config, width: int):
    key = jax.random.fold_in(jax.random.key(config.seed), width)
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (config.in_dim,), jnp.float64)
    x = config.x_norm * x / jnp.linalg.norm(x)
    base = um.init_params(kp, width, config.in_dim)
    m = um.output_divisor(config.param, width)
    y = jnp.asarray(config.y, jnp.float64)
    f0, th0 = um.output(base, x, m), um.ntk(base, x, m)
    return base, (f0, th0), x, y, m, m / (config.x_norm * abs(config.y))


def _late(out, etas, config, s2):
    """(eta lambda_H, eta Theta, period) of a late window; NaN / -1 where diverged."""
    f, th = np.asarray(out["f"]), np.asarray(out["theta"])
    div = np.asarray(out["diverged"])
    e = np.asarray(etas)[:, None]
    lam = e * np.asarray(um.top_hessian_eig(f, th, config.y, s2))
    z = np.stack([f / config.y, e * th], axis=-1)
    per = um.late_period(z, tol=config.period_tol, max_period=config.max_period)
    nan = np.where(div[:, None], np.nan, 1.0)
    return lam * nan, e * th * nan, np.where(div, -1, per)


def _period_fn(kind, base, scale, x, y, m, epk, config):
    s2 = float(x @ x) / m**2

    def fn(kappas):
        etas = jnp.asarray(kappas * epk)
        sc = jnp.full(etas.shape, scale)
        out = um.simulate(kind, base, etas, sc, x, y, m, num_steps=config.num_steps,
                          window=config.window)  # fmt: skip
        return _late(out, etas, config, s2)[2]

    return fn


def _regime(period, loss_ratio, lam_ratio):
    code = np.where(lam_ratio > 1.05, 2, np.where(lam_ratio < 0.95, 3, 1))
    code = np.where(loss_ratio > 1.05, 4, code)
    code = np.where(period >= 2, 5, np.where(period == 0, 6, code))
    return np.where(period < 0, 0, code)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O). ``progress(done, total)`` is called after each stage."""
    t0 = time.perf_counter()
    done, total = 0, 4 + len(config.widths)

    def tick():
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    with jax.enable_x64(True):
        base, (f0, th0), x, y, m, epk = _setup(config, config.width)
        s2 = float(x @ x) / m**2
        map_base = (f0, th0)
        sig = config.init_scale

        # Bifurcation on the function-space map, main width.
        kappa = np.linspace(config.kappa_min, config.kappa_max, config.num_kappa)
        etas = jnp.asarray(kappa * epk)
        out = um.simulate("map", map_base, etas, jnp.full(etas.shape, sig), x, y, m,
                          num_steps=config.num_steps, window=config.window)  # fmt: skip
        bif_lam, bif_ntk, bif_per = _late(out, etas, config, s2)
        z_last = np.stack([np.asarray(out["f"])[:, -1] / config.y, bif_ntk[:, -1]], axis=-1)
        z_safe = np.where(np.isfinite(z_last), z_last, 0.0)
        lyap = np.asarray(um.lyapunov(jnp.asarray(z_safe), jnp.asarray(kappa**2),
                                      num_steps=config.lyapunov_steps))  # fmt: skip
        lyap = np.where(bif_per < 0, np.nan, lyap)
        lo, hi = um.brackets(kappa, bif_per, config.num_doublings)
        targets = 2.0 ** np.arange(config.num_doublings)
        aperiodic = kappa[(kappa > hi[-1]) & (bif_per == 0)]
        k_chaos = aperiodic[0] if aperiodic.size else np.inf
        tick()

        # Doubling points by bisection, both levels, for every width.
        D, W = config.num_doublings, len(config.widths)
        d_map, d_par = np.zeros((W, D)), np.zeros((W, D))
        pk = np.linspace(config.kappa_min, config.kappa_max, config.num_kappa_params)
        p_lam = np.zeros((W, pk.size, config.window))
        p_per = np.zeros((W, pk.size), dtype=np.int64)
        gap = np.zeros(W)
        for i, w in enumerate(config.widths):
            b, (fb, tb), xw, yw, mw, epk_w = _setup(config, int(w))
            args = (xw, yw, mw, epk_w, config)
            d_map[i] = um.bisect(_period_fn("map", (fb, tb), sig, *args), lo, hi, targets,
                                 num_iters=config.bisect_iters)  # fmt: skip
            d_par[i] = um.bisect(_period_fn("params", b, sig, *args), lo, hi, targets,
                                 num_iters=config.bisect_iters)  # fmt: skip
            e = jnp.asarray(pk * epk_w)
            sc = jnp.full(e.shape, sig)
            kw = {"num_steps": config.num_steps, "window": config.window}
            o_p = um.simulate("params", b, e, sc, xw, yw, mw, **kw)
            o_m = um.simulate("map", (fb, tb), e, sc, xw, yw, mw, **kw)
            s2w = float(xw @ xw) / mw**2
            p_lam[i], _, p_per[i] = _late(o_p, e, config, s2w)
            per_m = _late(o_m, e, config, s2w)[2]
            # Compare where the dynamics is not chaotic: a chaotic transient amplifies rounding
            # and can land on the same periodic window at another phase.
            ok = (p_per[i] >= 1) & (per_m >= 1) & (pk < k_chaos)
            df = np.abs(np.asarray(o_p["f"]) - np.asarray(o_m["f"])) / abs(config.y)
            th_m = np.asarray(o_m["theta"])
            dt = np.abs(np.asarray(o_p["theta"]) - th_m) / np.abs(th_m)
            gap[i] = np.max(np.where(ok[:, None], np.maximum(df, dt), 0.0))
            tick()

        # Precise flips of the map's period-p orbits (Newton + Floquet), continuation in kappa.
        d_flo = np.full(D, np.nan)
        d_flo[0] = 1.0  # the minima T >= 2 kappa all lose stability at kappa = 1 (exact)
        if config.width in config.widths:
            ref = d_map[list(config.widths).index(config.width)]
        else:
            ref = um.bisect(_period_fn("map", map_base, sig, x, y, m, epk, config), lo, hi,
                            targets, num_iters=config.bisect_iters)  # fmt: skip
        k_lo = ref[1:] - 0.25 * np.diff(ref)  # safely inside each period-p window
        k_hi = ref[1:] + 0.5 * np.diff(ref)
        e = jnp.asarray(k_lo * epk)
        o = um.simulate("map", map_base, e, jnp.full(e.shape, sig), x, y, m,
                        num_steps=config.num_steps, window=config.window)  # fmt: skip
        z = np.stack([np.asarray(o["f"])[:, -1] / config.y,
                      np.asarray(e) * np.asarray(o["theta"])[:, -1]], axis=-1)  # fmt: skip
        for j in range(1, D):
            d_flo[j] = um.floquet_doubling(z[j - 1], k_lo[j - 1], k_hi[j - 1], 2**j)
        tick()

        # Phase diagram on the real model: kappa x init scale.
        pkap = np.geomspace(config.phase_kappa_min, config.phase_kappa_max, config.phase_num_kappa)
        psc = np.geomspace(config.phase_scale_min, config.phase_scale_max, config.phase_num_scale)
        kk, ss = np.meshgrid(pkap, psc)
        e = jnp.asarray(kk.ravel() * epk)
        o = um.simulate("params", base, e, jnp.asarray(ss.ravel()), x, y, m,
                        num_steps=config.phase_steps, window=config.window)  # fmt: skip
        ph_lam, _, ph_per = _late(o, e, config, s2)
        lam0 = np.asarray(e) * np.asarray(um.top_hessian_eig(o["f0"], o["theta0"], config.y, s2))
        loss_ratio = np.asarray(o["max_loss"]) / np.asarray(o["loss0"])
        regime = _regime(ph_per, loss_ratio, ph_lam[:, -1] / lam0)
        shape = kk.shape
        tick()

        # Trajectories, both levels.
        tk, ts = np.asarray(config.trajectory_kappas), np.asarray(config.trajectory_scales)
        e = jnp.asarray(tk * epk)
        f_p, th_p = um.trajectory("params", base, e, jnp.asarray(ts), x, y, m,
                                  num_steps=config.trajectory_steps)  # fmt: skip
        f_m, th_m = um.trajectory("map", map_base, e, jnp.asarray(ts), x, y, m,
                                  num_steps=config.trajectory_steps)  # fmt: skip
        f_p, th_p, f_m, th_m = (np.asarray(a) for a in (f_p, th_p, f_m, th_m))
        ec = np.asarray(e)[:, None]
        lam_p = ec * np.asarray(um.top_hessian_eig(f_p, th_p, config.y, s2))
        tick()

    return Results(
        config=config,
        kappa=kappa,
        eta_per_kappa=np.asarray(epk),
        bif_sharpness=bif_lam,
        bif_ntk=bif_ntk,
        bif_period=bif_per,
        bif_lyapunov=lyap,
        param_widths=np.asarray(config.widths, dtype=np.int64),
        param_kappa=pk,
        param_sharpness=p_lam,
        param_period=p_per,
        level_gap=gap,
        doubling_map=d_map,
        doubling_params=d_par,
        doubling_floquet=d_flo,
        phase_kappa=pkap,
        phase_scale=psc,
        phase_sharpness0=lam0.reshape(shape),
        phase_sharpness=ph_lam[:, -1].reshape(shape),
        phase_period=ph_per.reshape(shape),
        phase_regime=regime.reshape(shape),
        phase_loss_ratio=loss_ratio.reshape(shape),
        traj_ntk_params=ec * th_p,
        traj_ntk_map=ec * th_m,
        traj_sharpness=lam_p,
        traj_loss=0.5 * (f_p / config.y - 1.0) ** 2,
        traj_loss_map=0.5 * (f_m / config.y - 1.0) ** 2,
        elapsed=np.asarray(time.perf_counter() - t0),
    )


def figures(results: Results) -> dict[str, Figure]:
    """Phase diagram, bifurcation diagram and trajectories as matplotlib (Agg) figures."""
    return um.draw_figures(results, REGIMES)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load`` after ``save`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Key numbers: doubling points (kappa and eta), interval ratios, chaos onset, level gap."""
    r, out = results, {}
    epk = float(r.eta_per_kappa)
    flo = r.doubling_floquet
    out["eta_per_kappa"] = epk
    for j, k in enumerate(flo, start=1):
        out[f"kappa_doubling_{j}"] = float(k)
        out[f"eta_doubling_{j}"] = float(k) * epk
    d = np.diff(flo)
    for j in range(d.size - 1):
        out[f"ratio_{j + 1}"] = float(d[j] / d[j + 1]) if d[j + 1] > 0 else np.nan
    main = int(np.argmin(np.abs(r.param_widths - r.config.width)))
    dm = r.doubling_map[main]
    for j, k in enumerate(dm, start=1):
        out[f"kappa_doubling_{j}_bisection"] = float(k)
    dd = np.diff(dm)
    for j in range(dd.size - 1):
        out[f"ratio_{j + 1}_bisection"] = float(dd[j] / dd[j + 1]) if dd[j + 1] > 0 else np.nan
    out["max_doubling_gap_params_vs_map"] = float(
        np.max(np.abs(r.doubling_params - r.doubling_map))
    )
    out["max_level_gap"] = float(np.max(r.level_gap))
    past = r.kappa > np.nanmax(np.concatenate([flo, dm]))  # skip slow, unsettled thresholds
    chaotic = np.flatnonzero(past & (r.bif_period == 0) & (r.bif_lyapunov > 1e-3))
    out["kappa_chaos_onset"] = float(r.kappa[chaotic[0]]) if chaotic.size else float("nan")
    out["eta_chaos_onset"] = out["kappa_chaos_onset"] * epk
    if d.size >= 2 and d[-1] > 0:  # geometric extrapolation with the last measured ratio
        q = d[-2] / d[-1]
        out["kappa_accumulation_estimate"] = float(flo[-1] + d[-1] / (q - 1.0))
    diverged = np.flatnonzero(r.bif_period < 0)
    out["kappa_divergence"] = float(r.kappa[diverged[0]]) if diverged.size else float("nan")
    out["elapsed_s"] = float(r.elapsed)
    return out
