"""Figures of the edge-of-stability family (GD and momentum): curves with threshold lines."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

_NAMES = {"gd": "GD", "momentum": "heavy ball", "nesterov": "Nesterov"}


def _label(r, i) -> str:
    o = str(r.optimizers[i])
    s = f"{_NAMES.get(o, o)} $\\eta$={r.lrs[i]:g}"
    return s if o == "gd" else s + f", $\\beta$={r.momenta[i]:g}"


def _thr_name(o: str) -> str:
    return {"gd": "2/$\\eta$", "momentum": "(2+2$\\beta$)/$\\eta$"}.get(
        o, "(2+2$\\beta$)/((1+2$\\beta$)$\\eta$)"
    )


def dynamics(r) -> Figure:
    """Loss, sharpness (with each run's threshold, dashed) and eta*lambda / critical vs step."""
    fig = Figure(figsize=(8.5, 9.0), dpi=100, layout="constrained")
    ax_l, ax_s, ax_r = fig.subplots(3, 1, sharex=True)
    colors = [f"C{i % 10}" for i in range(r.lrs.size)]
    steps = np.arange(r.loss.shape[1])
    for i, col in enumerate(colors):
        lab = _label(r, i) + (" (diverged)" if r.diverged[i] else "")
        ax_l.plot(steps, r.loss[i], color=col, lw=1.0, label=lab)
        ax_s.plot(r.sharp_steps, r.sharpness[i], color=col, lw=1.2, label=lab)
        thr = r.critical[i] / r.lrs[i]
        ax_s.axhline(thr, color=col, ls="--", lw=0.9)
        ax_r.plot(r.sharp_steps, r.lrs[i] * r.sharpness[i] / r.critical[i], color=col, lw=1.0,
                  label=lab)  # fmt: skip
        if r.reach_step[i] >= 0:
            ax_r.axvline(r.reach_step[i], color=col, ls=":", lw=0.8)
    ax_l.set_yscale("log")
    ax_l.set_ylabel("training loss")
    ax_l.legend(fontsize=8, ncol=2)
    kinds = sorted(set(map(str, r.optimizers)))
    ax_s.set_ylabel("sharpness $\\lambda_{max}$")
    ax_s.set_title("dashed: each run's threshold " + ", ".join(map(_thr_name, kinds)), fontsize=9)
    ax_r.axhline(1.0, color="k", ls="--", lw=0.9, label="stability threshold")
    ax_r.set_ylabel("$\\eta\\lambda_{max}$ / critical value")
    ax_r.set_xlabel("step (dotted: first step at the threshold)")
    ax_r.set_ylim(0, 1.6)
    ax_r.legend(fontsize=8, loc="lower right")
    fig.suptitle("Progressive sharpening, then the edge of stability (full-batch training)")
    return fig


def flow(r) -> Figure:
    """Sharpness vs time tau = eta t (GD runs, and gradient flow in black) with 2/eta lines."""
    fig = Figure(figsize=(8.5, 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    tmax = r.flow_time[-1] if r.flow_time.size else np.max(r.lrs) * r.loss.shape[1]
    for i in range(r.lrs.size):
        col = f"C{i % 10}"
        tau = r.sharp_steps * r.lrs[i]
        keep = tau <= tmax
        ax.plot(tau[keep], r.sharpness[i][keep], color=col, lw=1.2, label=_label(r, i))
        ax.axhline(r.critical[i] / r.lrs[i], color=col, ls="--", lw=0.9)
    if r.flow_time.size:
        ax.plot(r.flow_time, r.flow_sharpness, color="k", lw=2.0,
                label=f"gradient flow (GD, step {r.config.flow_step:g})")  # fmt: skip
    ax.set_xlabel("time $\\tau = \\eta t$")
    ax.set_ylabel("sharpness $\\lambda_{max}$ (dashed: thresholds)")
    ax.set_title("Gradient flow keeps sharpening; GD stops at its threshold")
    ax.legend(fontsize=8)
    return fig


def draw(r, name: str) -> dict[str, Figure]:
    """``{name}_dynamics`` and, when the flow baseline ran, ``{name}_flow``."""
    figs = {f"{name}_dynamics": dynamics(r)}
    if r.flow_time.size:
        figs[f"{name}_flow"] = flow(r)
    return figs
