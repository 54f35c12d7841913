"""Figures of the central-flow study: GD (raw and smoothed) against its central flow.

Receives a Results-like object (``lrs``, ``gd_*``, ``flow_*``, ``reach_step``, ``diverged``,
``config.flow_dt``); never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["draw", "loss", "sharpness"]


def _mark(ax, r, i, col) -> None:
    if r.reach_step[i] >= 0:
        ax.axvline(r.reach_step[i], color=col, ls=":", lw=0.8)


def sharpness(r) -> Figure:
    """Per learning rate: GD's lambda_max (thin), smoothed (thick), the flow's (black), 2/eta."""
    P = r.lrs.size
    fig, axes = style.figure(P, 1, height=3.2 * P, title="Sharpness: GD against its central flow")
    steps = np.arange(r.gd_sharpness.shape[1])
    for i, ax in enumerate(axes):
        col = style.color(i)
        t = np.arange(r.flow_eigenvalues.shape[1]) * r.config.flow_dt
        ax.plot(steps, r.gd_sharpness[i], color=col, lw=0.5, alpha=0.45, label="GD")
        ax.plot(steps, r.gd_sharpness_smooth[i], color=col, lw=1.6, label="GD, smoothed")
        ax.plot(t, r.flow_eigenvalues[i, :, 0], color="k", lw=1.0, label="central flow")
        style.threshold(ax, 2.0 / r.lrs[i], color=col, label=style.TWO_OVER_ETA)
        _mark(ax, r, i, col)
        lo = 0.5 * np.nanmin(r.gd_sharpness[i][: max(int(r.reach_step[i]), 1)], initial=np.inf)
        ax.set_ylim(max(lo, 0.0) if np.isfinite(lo) else None, 1.35 * 2.0 / r.lrs[i])
        xl = "step (dotted: GD first at 2/$\\eta$)"
        style.finish(
            ax,
            ylabel=style.SHARPNESS,
            xlabel=xl if i == P - 1 else None,
            title=f"GD $\\eta$={r.lrs[i]:g}" + (" (diverged)" if r.diverged[i] else ""),
        )
    return fig


def loss(r) -> Figure:
    """Per learning rate: GD's loss (raw, smoothed), the flow's L and L + oscillation energy."""
    P = r.lrs.size
    fig, axes = style.figure(P, 1, height=3.2 * P, title="Loss: GD against its central flow")
    steps = np.arange(r.gd_loss.shape[1])
    for i, ax in enumerate(axes):
        col = style.color(i)
        t = np.arange(r.flow_loss.shape[1]) * r.config.flow_dt
        ax.plot(steps, r.gd_loss[i], color=col, lw=0.5, alpha=0.45, label="GD")
        ax.plot(steps, r.gd_loss_smooth[i], color=col, lw=1.6, label="GD, smoothed")
        ax.plot(t, r.flow_loss[i], color="k", lw=0.8, ls="--", label="flow: $L(w(t))$")
        ax.plot(t, r.flow_predicted_loss[i], color="0.65", lw=0.4)
        ax.plot(
            steps, r.flow_predicted_smooth[i], color="k", lw=1.4,
            label="flow: $L + \\frac{1}{2}\\langle\\Sigma, H\\rangle$, smoothed (grey: per step)",
        )  # fmt: skip
        _mark(ax, r, i, col)
        style.finish(
            ax,
            ylabel="training loss",
            xlabel="step (dotted: GD first at 2/$\\eta$)" if i == P - 1 else None,
            title=f"GD $\\eta$={r.lrs[i]:g}" + (" (diverged)" if r.diverged[i] else ""),
            logy=True,
        )
    return fig


def draw(r, name: str) -> dict[str, Figure]:
    """``{name}_sharpness`` and ``{name}_loss``."""
    return {f"{name}_sharpness": sharpness(r), f"{name}_loss": loss(r)}
