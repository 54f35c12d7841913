"""Figures of the edge-of-stability family (GD and momentum): curves with threshold lines.

Receives a Results-like object (``optimizers``, ``lrs``, ``momenta``, ``critical``, ``loss``,
``sharp_steps``, ``sharpness``, ``diverged``, ``reach_step``, ``flow_*``); never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["draw", "dynamics", "flow", "run_label"]

_NAMES = {"gd": "GD", "momentum": "heavy ball", "nesterov": "Nesterov"}
_THRESHOLDS = {
    "gd": "2/$\\eta$",
    "momentum": "(2+2$\\beta$)/$\\eta$",
    "nesterov": "(2+2$\\beta$)/((1+2$\\beta$)$\\eta$)",
}


def run_label(optimizer: str, lr: float, momentum: float, *, tex: bool = False) -> str:
    """``"GD eta=0.2"`` or ``"heavy ball eta=0.4 beta=0.9"`` (math symbols with ``tex``)."""
    eta, beta = ("$\\eta$", "$\\beta$") if tex else ("eta", "beta")
    o = str(optimizer)
    s = f"{_NAMES.get(o, o)} {eta}={lr:g}"
    return s if o == "gd" else s + f" {beta}={momentum:g}"


def _label(r, i) -> str:
    lab = run_label(r.optimizers[i], r.lrs[i], r.momenta[i], tex=True)
    return lab + (" (diverged)" if r.diverged[i] else "")


def dynamics(r) -> Figure:
    """Loss, sharpness (with each run's threshold, dashed) and eta*lambda / critical vs step."""
    fig, (ax_l, ax_s, ax_r) = style.figure(
        3,
        1,
        sharex=True,
        height=9.0,
        title="Progressive sharpening, then the edge of stability (full-batch training)",
    )
    steps = np.arange(r.loss.shape[1])
    for i in range(r.lrs.size):
        col, lab = style.color(i), _label(r, i)
        ax_l.plot(steps, r.loss[i], color=col, lw=1.0, label=lab)
        ax_s.plot(r.sharp_steps, r.sharpness[i], color=col, lw=1.2)
        style.threshold(ax_s, r.critical[i] / r.lrs[i], color=col)
        ax_r.plot(r.sharp_steps, r.lrs[i] * r.sharpness[i] / r.critical[i], color=col, lw=1.0)
        if r.reach_step[i] >= 0:
            ax_r.axvline(r.reach_step[i], color=col, ls=":", lw=0.8)
    kinds = sorted(set(map(str, r.optimizers)))
    style.finish(ax_l, ylabel="training loss", logy=True)
    style.finish(
        ax_s,
        ylabel=style.SHARPNESS,
        title="dashed: each run's threshold " + ", ".join(_THRESHOLDS[k] for k in kinds),
    )
    style.threshold(ax_r, 1.0, label="stability threshold")
    ax_r.set_ylim(0, 1.6)
    style.finish(
        ax_r,
        ylabel=style.ETA_LAMBDA + " / critical value",
        xlabel="step (dotted: first step at the threshold)",
    )
    return fig


def flow(r, flow_step: float) -> Figure:
    """Sharpness vs time tau = eta t (GD runs, and gradient flow in black) with 2/eta lines."""
    fig, (ax,) = style.figure(1, 1, height=4.5)
    tmax = r.flow_time[-1] if r.flow_time.size else np.max(r.lrs) * r.loss.shape[1]
    for i in range(r.lrs.size):
        tau = r.sharp_steps * r.lrs[i]
        keep = tau <= tmax
        ax.plot(tau[keep], r.sharpness[i][keep], color=style.color(i), lw=1.2, label=_label(r, i))
        style.threshold(ax, r.critical[i] / r.lrs[i], color=style.color(i))
    if r.flow_time.size:
        ax.plot(
            r.flow_time,
            r.flow_sharpness,
            color="k",
            lw=2.0,
            label=f"gradient flow (GD, step {flow_step:g})",
        )
    style.finish(
        ax,
        xlabel="time $\\tau = \\eta t$",
        ylabel=style.SHARPNESS + " (dashed: thresholds)",
        title="Gradient flow keeps sharpening; GD stops at its threshold",
    )
    return fig


def draw(r, name: str) -> dict[str, Figure]:
    """``{name}_dynamics`` and, when the flow baseline ran, ``{name}_flow``."""
    figs = {f"{name}_dynamics": dynamics(r)}
    if r.flow_time.size:
        figs[f"{name}_flow"] = flow(r, r.config.flow_step)
    return figs
