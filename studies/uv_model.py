"""Reproduce the UV model's sharpness dynamics: catapults, edge of stability, route to chaos.

Kalra, He & Barkeshli 2023 (arXiv 2311.02076). The model is :func:`hessian_lab.models.uv`,
``f = v . u x / m`` (NTP: ``m = sqrt(n)``; muP: ``m = n`` with the GD step ``n`` times larger),
``u, v ~ N(0, sigma^2)``, one example ``(x, y)``, loss ``(f - y)^2 / 2`` and plain GD with step
``eta``. GD on it is an exact map of ``(f, Theta)`` (``Theta`` the NTK) whose only parameter is
``kappa = eta |y| |x| / m``, and the top Hessian eigenvalue ``lambda_H`` is a closed form of
``(f, Theta)`` (:mod:`hessian_lab.studies.uv_model_core`; derivations in
``docs/studies/uv_model.md``). Minima are stable iff ``eta Theta < 2``, and ``eta Theta >=
2 kappa`` there: for ``kappa < 1`` GD can settle; for ``kappa > 1`` the late orbit lives on the
edge of stability, doubling its period on the way to chaos as ``kappa`` grows.

What ``run`` measures: a phase diagram over (kappa, sigma) on the real model; a bifurcation
diagram of late ``eta lambda_H`` on the map and, at several widths, on the real model; the period
doublings by bisection on both levels and by Floquet multipliers on the map, whose interval ratios
the verdict compares with Feigenbaum's 4.669.

Example:
  >>> from hessian_lab.studies import uv_model
  >>> r = uv_model.run(uv_model.TINY)  # doctest: +SKIP
  >>> uv_model.summary(r)["kappa_doubling"]["2->4"]  # doctest: +SKIP
  1.236...
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from . import kit
from . import uv_model_core as core
from . import uv_model_plots as plots
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "FEIGENBAUM", "METRICS", "NAME", "PAPER", "REGIMES", "TINY"]
__all__ += ["Config", "Results", "figures", "load", "run", "save", "summary", "verdict"]

NAME = "uv_model"
PAPER = "Kalra, He & Barkeshli 2023, arXiv 2311.02076"
DOCS = "docs/studies/uv_model.md"
FEIGENBAUM = 4.669201609  # the limit of the ratios of successive period-doubling intervals
REGIMES = core.REGIMES


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the UV study. Learning rates are given as ``kappa = eta |y| |x| / m``."""

    param: Literal["ntp", "mup"] = knob("ntp", "parameterisation: NTP (m = sqrt(n)) or muP (m = n)")
    width: int = knob(16, "width n of the phase diagram, main bifurcation and trajectories")
    widths: tuple[int, ...] = knob((16, 64, 256), "widths of the parameter-space bifurcation")
    in_dim: int = knob(1, "input dimension d")
    x_norm: float = knob(1.0, "norm |x| of the single input")
    y: float = knob(1.0, "the single target y (non-zero)")
    seed: int = knob(0, "seed of the input direction and the initialisation")
    init_scale: float = knob(0.05, "init scale sigma of the bifurcation runs (small output)")
    kappa_min: float = knob(0.9, "bifurcation grid: smallest kappa")
    kappa_max: float = knob(2.05, "bifurcation grid: largest kappa")
    num_kappa: int = knob(1151, "bifurcation grid points on the function-space map")
    num_kappa_params: int = knob(111, "bifurcation grid points in parameter space, per width")
    num_steps: int = knob(20000, "GD steps of transient before the late-time window")
    window: int = knob(128, "late-time window: steps recorded after the transient")
    max_period: int = knob(32, "longest period detected (a power of two)")
    period_tol: float = knob(1e-7, "relative tolerance of the period detection")
    num_doublings: int = knob(5, "period doublings located (1->2, 2->4, ...)")
    bisect_iters: int = knob(24, "bisection halvings per doubling point")
    lyapunov_steps: int = knob(4000, "map steps averaged for the Lyapunov exponent")
    phase_kappa_min: float = knob(0.01, "phase diagram: smallest kappa (log grid)")
    phase_kappa_max: float = knob(3.0, "phase diagram: largest kappa")
    phase_num_kappa: int = knob(49, "phase diagram: kappa grid points")
    phase_scale_min: float = knob(0.02, "phase diagram: smallest init scale sigma (log grid)")
    phase_scale_max: float = knob(3.0, "phase diagram: largest init scale sigma")
    phase_num_scale: int = knob(41, "phase diagram: sigma grid points")
    phase_steps: int = knob(4000, "phase diagram: GD steps before the late-time window")
    trajectory_kappas: tuple[float, ...] = knob(
        (0.5, 0.015, 0.3, 1.1, 1.27, 1.4), "trajectories: kappa of each"
    )
    trajectory_scales: tuple[float, ...] = knob(
        (0.05, 2.5, 1.0, 0.05, 0.05, 0.05), "trajectories: init scale sigma of each"
    )
    trajectory_steps: int = knob(150, "trajectories: GD steps recorded")

    def __post_init__(self):
        kit.check_finite(self)
        kit.check_choice(self, "param", ("ntp", "mup"))
        kit.check_ints(self, "width", "in_dim", "num_kappa", "num_kappa_params", "phase_num_kappa")
        kit.check_ints(self, "phase_num_scale", "num_steps", "bisect_iters", "lyapunov_steps")
        kit.check_ints(self, "phase_steps", "trajectory_steps", "window", "max_period")
        kit.check_seeds(self, "seed")
        kit.check_int_tuple(self, "widths", distinct=False)
        kit.check_positive(self, "x_norm", "init_scale", "kappa_min", "phase_kappa_min")
        kit.check_positive(self, "phase_scale_min")
        need(np.isfinite(self.y) and self.y != 0, self, "y", "a non-zero number")
        for lo, hi in (("kappa_min", "kappa_max"), ("phase_kappa_min", "phase_kappa_max"),
                       ("phase_scale_min", "phase_scale_max")):  # fmt: skip
            need(getattr(self, hi) > getattr(self, lo), self, hi, f"> {lo}")
        need(self.max_period & (self.max_period - 1) == 0, self, "max_period", "a power of two")
        need(self.window >= 2 * self.max_period, self, "window", ">= 2 * max_period")
        need(kit.is_int(self.num_doublings) and 1 <= self.num_doublings
             and 2**self.num_doublings <= self.max_period, self, "num_doublings",
             "an int >= 1 with 2**num_doublings <= max_period")  # fmt: skip
        need(0 < self.period_tol < 1, self, "period_tol", "in (0, 1)")
        kit.check_rates(self, "trajectory_kappas")
        need(len(self.trajectory_scales) == len(self.trajectory_kappas), self,
             "trajectory_scales", "as long as trajectory_kappas")  # fmt: skip
        kit.check_rates(self, "trajectory_scales")


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

    config: Any
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


def total_steps(config: Config) -> int:
    """GD (and map) steps of a run, summed over every simulated member: the progress total."""
    c, n = config, config.num_steps + config.window
    bisection = c.bisect_iters * c.num_doublings * n
    total = c.num_kappa * (n + c.lyapunov_steps) + (c.num_doublings - 1) * n
    total += len(c.widths) * (2 * bisection + 2 * c.num_kappa_params * n)
    total += 0 if c.width in c.widths else bisection
    total += c.phase_num_kappa * c.phase_num_scale * (c.phase_steps + c.window)
    return total + 2 * len(c.trajectory_kappas) * c.trajectory_steps


class _Sim:
    """Simulations of one run: one config, one progress counter."""

    def __init__(self, config: Config, counter: kit.StepCounter):
        self.config, self.counter = config, counter

    def late(self, level, st: core.Setup, kappas, scale=None, num_steps=None):
        """``(raw output, etas, (eta lambda_H, eta Theta, period))`` of late windows at ``kappas``.

        ``scale`` defaults to ``init_scale``, ``num_steps`` to the transient ``num_steps``.
        """
        c = self.config
        scale = c.init_scale if scale is None else scale
        num_steps = c.num_steps if num_steps is None else num_steps
        etas = jnp.asarray(np.asarray(kappas) * st.eta_per_kappa)
        base = st.params if level == "params" else st.start
        out = core.simulate(level, base, etas, jnp.broadcast_to(jnp.asarray(scale), etas.shape),
                            st.x, st.y, st.s2, param=c.param, num_steps=num_steps,
                            window=c.window)  # fmt: skip
        self.done(etas.shape[0] * (num_steps + c.window))
        late = core.late_window(out, etas, c.y, st.s2, tol=c.period_tol, max_period=c.max_period)
        return out, etas, late

    def period_fn(self, level, st: core.Setup) -> Callable[[np.ndarray], np.ndarray]:
        return lambda kappas: self.late(level, st, kappas)[2][2]

    def done(self, steps: int) -> None:
        report = self.counter.part(steps)
        if report is not None:
            report(steps, steps)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Run the whole study (no I/O); ``progress(done, total)`` counts simulated GD steps."""
    t0, c = time.perf_counter(), config
    sim = _Sim(c, kit.StepCounter(total_steps(c), progress))
    with jax.enable_x64(True):
        main = core.setup(c, c.width)
        # Bifurcation on the function-space map, main width.
        kappa = np.linspace(c.kappa_min, c.kappa_max, c.num_kappa)
        out, _, (bif_lam, bif_ntk, bif_per) = sim.late("map", main, kappa)
        z = np.stack([np.asarray(out["f"])[:, -1] / c.y, bif_ntk[:, -1]], axis=-1)
        z = jnp.asarray(np.where(np.isfinite(z), z, 0.0))
        lyap = np.asarray(core.lyapunov(z, jnp.asarray(kappa**2), num_steps=c.lyapunov_steps))
        sim.done(kappa.size * c.lyapunov_steps)
        lyap = np.where(bif_per < 0, np.nan, lyap)
        lo, hi = core.brackets(kappa, bif_per, c.num_doublings)
        targets = 2.0 ** np.arange(c.num_doublings)
        aperiodic = kappa[(kappa > hi[-1]) & (bif_per == 0)]
        k_chaos = aperiodic[0] if aperiodic.size else np.inf

        # Doubling points by bisection on both levels, and both levels' late orbits, per width.
        W, D, iters = len(c.widths), c.num_doublings, c.bisect_iters
        d_map, d_par, gap = np.zeros((W, D)), np.zeros((W, D)), np.zeros(W)
        pk = np.linspace(c.kappa_min, c.kappa_max, c.num_kappa_params)
        p_lam = np.zeros((W, pk.size, c.window))
        p_per = np.zeros((W, pk.size), dtype=np.int64)
        for i, w in enumerate(c.widths):
            st = core.setup(c, int(w))
            d_map[i] = core.bisect(sim.period_fn("map", st), lo, hi, targets, num_iters=iters)
            d_par[i] = core.bisect(sim.period_fn("params", st), lo, hi, targets, num_iters=iters)
            o_p, _, (p_lam[i], _, p_per[i]) = sim.late("params", st, pk)
            o_m, _, (_, _, per_m) = sim.late("map", st, pk)
            gap[i] = core.level_gap(o_p, o_m, (p_per[i] >= 1) & (per_m >= 1) & (pk < k_chaos), c.y)

        # Precise flips of the map's period-p orbits (Newton + Floquet), continuation in kappa.
        d_flo = np.full(D, np.nan)
        d_flo[0] = 1.0  # the minima T >= 2 kappa all lose stability at kappa = 1 (exact)
        if c.width in c.widths:
            ref = d_map[list(c.widths).index(c.width)]
        else:
            ref = core.bisect(sim.period_fn("map", main), lo, hi, targets, num_iters=iters)
        if D > 1:
            k_lo = ref[1:] - 0.25 * np.diff(ref)  # safely inside each period-p window
            k_hi = ref[1:] + 0.5 * np.diff(ref)
            o, e, _ = sim.late("map", main, k_lo)
            z = np.stack([np.asarray(o["f"])[:, -1] / c.y,
                          np.asarray(e) * np.asarray(o["theta"])[:, -1]], axis=-1)  # fmt: skip
            for j in range(1, D):
                d_flo[j] = core.floquet_doubling(z[j - 1], k_lo[j - 1], k_hi[j - 1], 2**j)

        # Phase diagram on the real model: kappa x init scale.
        pkap = np.geomspace(c.phase_kappa_min, c.phase_kappa_max, c.phase_num_kappa)
        psc = np.geomspace(c.phase_scale_min, c.phase_scale_max, c.phase_num_scale)
        kk, ss = np.meshgrid(pkap, psc)
        o, e, (ph_lam, _, ph_per) = sim.late("params", main, kk.ravel(), ss.ravel(), c.phase_steps)
        lam0 = np.asarray(e) * np.asarray(core.top_hessian_eig(o["f0"], o["theta0"], c.y, main.s2))
        loss_ratio = np.asarray(o["max_loss"]) / np.asarray(o["loss0"])
        regime = core.regime(ph_per, loss_ratio, ph_lam[:, -1] / lam0)

        # Trajectories, both levels.
        e = jnp.asarray(np.asarray(c.trajectory_kappas) * main.eta_per_kappa)
        args = (e, jnp.asarray(c.trajectory_scales), main.x, main.y, main.s2)
        kw = {"param": c.param, "num_steps": c.trajectory_steps}
        f_p, th_p = (np.asarray(a) for a in core.trajectory("params", main.params, *args, **kw))
        f_m, th_m = (np.asarray(a) for a in core.trajectory("map", main.start, *args, **kw))
        sim.done(2 * e.shape[0] * c.trajectory_steps)
        ec = np.asarray(e)[:, None]
    sim.counter.finish()
    shape = kk.shape
    return Results(
        config=config, kappa=kappa, eta_per_kappa=np.asarray(main.eta_per_kappa),
        bif_sharpness=bif_lam, bif_ntk=bif_ntk, bif_period=bif_per, bif_lyapunov=lyap,
        param_widths=np.asarray(c.widths, dtype=np.int64), param_kappa=pk,
        param_sharpness=p_lam, param_period=p_per, level_gap=gap,
        doubling_map=d_map, doubling_params=d_par, doubling_floquet=d_flo,
        phase_kappa=pkap, phase_scale=psc, phase_sharpness0=lam0.reshape(shape),
        phase_sharpness=ph_lam[:, -1].reshape(shape), phase_period=ph_per.reshape(shape),
        phase_regime=regime.reshape(shape), phase_loss_ratio=loss_ratio.reshape(shape),
        traj_ntk_params=ec * th_p, traj_ntk_map=ec * th_m,
        traj_sharpness=ec * np.asarray(core.top_hessian_eig(f_p, th_p, c.y, main.s2)),
        traj_loss=0.5 * (f_p / c.y - 1.0) ** 2, traj_loss_map=0.5 * (f_m / c.y - 1.0) ** 2,
        elapsed=np.asarray(time.perf_counter() - t0),
    )  # fmt: skip


def figures(results: Results) -> dict[str, Figure]:
    """Phase diagram, bifurcation diagram and trajectories."""
    return plots.draw(results, REGIMES)


METRICS = {
    "kappa_doubling": kit.Metric("kappa of each period doubling (Floquet flip on the map)"),
    "eta_doubling": kit.Metric("the same as a learning rate at the main width", "lr"),
    "kappa_doubling_bisection": kit.Metric("kappa of each doubling, bisection on the late period"),
    "interval_ratio": kit.Metric("ratio of successive doubling intervals (Floquet), -> 4.669"),
    "interval_ratio_bisection": kit.Metric("the same from the bisection doubling points"),
    "kappa_accumulation": kit.Metric("end of the cascade, extrapolated geometrically"),
    "kappa_chaos_onset": kit.Metric("first aperiodic kappa with a positive Lyapunov exponent"),
    "eta_chaos_onset": kit.Metric("the same as a learning rate at the main width", "lr"),
    "kappa_divergence": kit.Metric("first kappa at which GD on the map diverges"),
    "bifurcation_diverged": kit.Metric("bifurcation grid points that diverged (left out)", "runs"),
    "doubling_gap": kit.Metric("largest |doubling kappa, real model - map| (bisection), per width"),
    "level_gap": kit.Metric("largest relative (f, Theta) gap real model vs map before chaos"),
    "phase_regimes": kit.Metric("phase-diagram grid points in each regime", "runs"),
    "eta_per_kappa": kit.Metric("eta per unit kappa at the main width, m / (|x| |y|)", "lr"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def _doubling(j: int) -> str:  # the j-th doubling (from 0): "1->2", "2->4", ...
    return f"{2**j}->{2 ** (j + 1)}"


def _ratios(k: np.ndarray) -> dict[str, float]:
    d = np.diff(k)
    return {
        f"{_doubling(j)} .. {_doubling(j + 2)}": float(d[j] / d[j + 1]) if d[j + 1] > 0 else np.nan
        for j in range(d.size - 1)
    }


def summary(results: Results) -> dict[str, Any]:
    """Doubling points (kappa and eta), interval ratios, chaos onset, levels' gap, regimes."""
    r, epk = results, float(results.eta_per_kappa)
    flo = r.doubling_floquet
    main = int(np.argmin(np.abs(r.param_widths - r.config.width)))
    dm = r.doubling_map[main]
    past = r.kappa > np.nanmax(np.concatenate([flo, dm]))  # skip slow, unsettled thresholds
    chaotic = np.flatnonzero(past & (r.bif_period == 0) & (r.bif_lyapunov > 1e-3))
    onset = float(r.kappa[chaotic[0]]) if chaotic.size else np.nan
    d = np.diff(flo)
    acc = np.nan
    if d.size >= 2 and d[-1] > 0:  # geometric extrapolation with the last measured ratio
        acc = float(flo[-1] + d[-1] / (d[-2] / d[-1] - 1.0))
    diverged = np.flatnonzero(r.bif_period < 0)
    widths = [f"n={w}" for w in r.param_widths]
    gaps = np.max(np.abs(r.doubling_params - r.doubling_map), axis=1)
    return {
        "kappa_doubling": {_doubling(j): float(k) for j, k in enumerate(flo)},
        "eta_doubling": {_doubling(j): float(k) * epk for j, k in enumerate(flo)},
        "kappa_doubling_bisection": {_doubling(j): float(k) for j, k in enumerate(dm)},
        "interval_ratio": _ratios(flo),
        "interval_ratio_bisection": _ratios(dm),
        "kappa_accumulation": acc,
        "kappa_chaos_onset": onset,
        "eta_chaos_onset": onset * epk,
        "kappa_divergence": float(r.kappa[diverged[0]]) if diverged.size else np.nan,
        "bifurcation_diverged": int(diverged.size),
        "doubling_gap": dict(zip(widths, map(float, gaps), strict=True)),
        "level_gap": dict(zip(widths, map(float, r.level_gap), strict=True)),
        "phase_regimes": {n: int(np.sum(r.phase_regime == i)) for i, n in enumerate(REGIMES)},
        "eta_per_kappa": epk,
        "elapsed_s": float(r.elapsed),
    }


def verdict(results: Results) -> list[str]:
    """The cascade against theory and Feigenbaum, chaos, the exact map, the regimes found."""
    s = summary(results)
    bis = s["kappa_doubling_bisection"]["1->2"]
    out = [kit.compare("first period doubling (bisection on GD's late orbit), kappa", bis, "theory",
                       "1, where the flattest minimum stops being stable", ok=abs(bis - 1) < 0.01)]  # fmt: skip
    ratios = list(s["interval_ratio"].values())
    if ratios:
        ok = bool(np.isfinite(ratios[-1]) and abs(ratios[-1] / FEIGENBAUM - 1) < 0.05)
        out.append(kit.compare("ratios of successive doubling intervals",
                               ", ".join(kit.fmt(q, 4) for q in ratios), "Feigenbaum",
                               f"-> {FEIGENBAUM:.4g}, approached from below", ok=ok))  # fmt: skip
    onset, acc = s["kappa_chaos_onset"], s["kappa_accumulation"]
    out.append(kit.compare("chaos onset, kappa", onset, "the cascade's accumulation point",
                           kit.fmt(acc, 6), ok=None if np.isnan(acc) else abs(onset - acc) < 0.01))  # fmt: skip
    gd, gl = max(s["doubling_gap"].values()), max(s["level_gap"].values())
    out.append(kit.compare("real model vs the exact map: doubling-point gap, orbit gap",
                           f"{kit.fmt(gd)}, {kit.fmt(gl)}", "theory", "0 at every width",
                           ok=gd < 1e-4 and gl < 1e-8))  # fmt: skip
    found = [n for n, k in s["phase_regimes"].items() if k]
    paper = ("progressive sharpening", "sharpness reduction", "catapult", "edge of stability")
    out.append(kit.compare("regimes on the phase diagram", ", ".join(found), "Kalra et al.",
                           ", ".join(paper), ok=set(paper) <= set(found)))  # fmt: skip
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
