"""Figures of the critical-sharpness study: lambda_c beside lambda_max, and their ratio.

Receives a Results-like object (``optimizers``, ``lrs``, ``momenta``, ``critical``, ``steps``,
``sharpness``, ``critical_sharpness``, ``diverged``, ``reach_step``, ``alignment``,
``config.alignment_k``); never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style
from .edge_of_stability_plots import run_label

__all__ = ["draw", "dynamics", "run_label"]


def dynamics(r) -> Figure:
    """lambda_max (solid) and lambda_c (dots) vs step with each threshold; lambda_c / lambda_max;
    the gradient's share in the top-k eigenspace (when measured)."""
    aligned = np.isfinite(r.alignment).any()
    fig, axes = style.figure(
        3 if aligned else 2,
        1,
        sharex=True,
        height=10.0 if aligned else 7.0,
        title="Critical sharpness beside the sharpness",
    )
    ax_s, ax_r = axes[0], axes[1]
    for i in range(r.lrs.size):
        col = style.color(i)
        lab = run_label(r.optimizers[i], r.lrs[i], r.momenta[i], tex=True)
        lab += " (diverged)" if r.diverged[i] else ""
        ax_s.plot(r.steps, r.sharpness[i], color=col, lw=1.2, label=lab + r": $\lambda_{max}$")
        ax_s.plot(r.steps, r.critical_sharpness[i], ".", color=col, ms=3, label=r"$\lambda_c$")
        style.threshold(ax_s, r.critical[i] / r.lrs[i], color=col)
        ratio = r.critical_sharpness[i] / r.sharpness[i]
        ax_r.plot(r.steps, ratio, color=col, lw=1.0)
        if aligned:
            ok = np.isfinite(r.alignment[i])  # measured every alignment_every steps
            axes[2].plot(r.steps[ok], r.alignment[i][ok], ".-", color=col, lw=1.0, ms=3)
        for ax in axes[1:] if r.reach_step[i] >= 0 else ():
            ax.axvline(r.reach_step[i], color=col, ls=":", lw=0.8)
    style.finish(ax_s, ylabel="curvature (dashed: each run's threshold)", logy=True)
    style.threshold(ax_r, 1.0, label=r"$\lambda_c = \lambda_{max}$")
    ax_r.set_ylim(0, 1.3)
    xlabel = "step (dotted: first step at the threshold)"
    style.finish(ax_r, ylabel=r"$\lambda_c / \lambda_{max}$", xlabel=None if aligned else xlabel)
    if aligned:
        k = r.config.alignment_k
        axes[2].set_ylim(-0.02, 1.02)
        style.finish(
            axes[2], ylabel=f"share of the gradient\nin the top-{k} eigenspace", xlabel=xlabel
        )
    return fig


def draw(r, name: str) -> dict[str, Figure]:
    """``{name}_dynamics``."""
    return {f"{name}_dynamics": dynamics(r)}
