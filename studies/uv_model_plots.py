"""Figures of the UV-model study: phase diagram, bifurcation diagram, trajectories.

Receives a Results-like object (``phase_*``, ``kappa``, ``bif_*``, ``param_*``,
``doubling_floquet``, ``traj_*``, ``eta_per_kappa`` and its ``config``) and the regime names;
never imports the study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from . import style

__all__ = ["KAPPA", "bifurcation", "draw", "phase_diagram", "trajectories"]

KAPPA = "$\\kappa=\\eta|y||x|/m$"
_LATE = "late " + style.ETA + "$\\lambda_H$"
_REGIME_COLORS = ("black", "lightgray", "C0", "C2", "C1", "C3", "C4")


def phase_diagram(r, regimes) -> Figure:
    """Regimes and late ``eta lambda_H`` over (kappa, init scale), with ``eta lambda_0 = 2``."""
    c = r.config
    fig, (ax1, ax2) = style.figure(1, 2, height=4.0, title=f"UV model ({c.param}, n={c.width})")
    cmap = ListedColormap(list(_REGIME_COLORS[: len(regimes)]))
    ax1.pcolormesh(r.phase_kappa, r.phase_scale, r.phase_regime, cmap=cmap, vmin=-0.5,
                   vmax=len(regimes) - 0.5, shading="nearest")  # fmt: skip
    im = ax2.pcolormesh(r.phase_kappa, r.phase_scale, r.phase_sharpness, shading="nearest",
                        cmap="viridis", vmin=0.0, vmax=4.0)  # fmt: skip
    fig.colorbar(im, ax=ax2, label=_LATE)
    for ax in (ax1, ax2):
        ax.contour(r.phase_kappa, r.phase_scale, r.phase_sharpness0, levels=[2.0],
                   colors="white", linestyles="--")  # fmt: skip
        ax.axvline(1.0, color="white", lw=0.8)
    style.finish(ax1, xlabel=KAPPA, ylabel="init scale $\\sigma$", title="regimes",
                 logx=True, logy=True, legend=False)  # fmt: skip
    ax1.legend(handles=[Patch(color=cmap(i), label=n) for i, n in enumerate(regimes)],
               fontsize=7, loc="lower left")  # fmt: skip
    style.finish(ax2, xlabel=KAPPA, title="late sharpness; dashed: $\\eta\\lambda_0=2$, "
                 "line: $\\kappa=1$", logx=True, logy=True)  # fmt: skip
    return fig


def bifurcation(r) -> Figure:
    """Late ``eta lambda_H`` vs eta (map) and vs kappa (map and real model), Lyapunov exponent."""
    c = r.config
    fig, (ax1, ax2, ax3) = style.figure(3, 1, height=7.5)
    k = r.bif_sharpness.shape[1]
    epk = float(r.eta_per_kappa)
    ax1.plot(np.repeat(r.kappa * epk, k), r.bif_sharpness.ravel(), ",", color="k", alpha=0.6)
    for i, kd in enumerate(r.doubling_floquet):
        ax1.axvline(
            kd * epk, color="C3", lw=0.6, ls=":", label="doubling (Floquet)" if i == 0 else None
        )
    style.threshold(ax1, 2.0, color="gray")
    style.finish(ax1, xlabel=f"{style.ETA} (n={c.width}, {c.param})", ylabel=_LATE,
                 title="function-space map")  # fmt: skip
    ax2.plot(np.repeat(r.kappa, k), r.bif_sharpness.ravel(), ",", color="gray", label="map")
    for i, w in enumerate(r.param_widths):
        ax2.plot(np.repeat(r.param_kappa, k), r.param_sharpness[i].ravel(), ".", ms=1.5,
                 color=style.color(i), label=f"real model, n={w}")  # fmt: skip
    style.finish(ax2, xlabel=KAPPA, ylabel=_LATE,
                 title="real model (GD in parameter space) at several widths vs the map")  # fmt: skip
    ax2.legend(fontsize=7, markerscale=6)
    ax3.plot(r.kappa, r.bif_lyapunov, color="k", lw=0.8)
    style.threshold(ax3, 0.0, color="gray")
    style.finish(ax3, xlabel=KAPPA, ylabel="Lyapunov exponent")
    return fig


def trajectories(r) -> Figure:
    """Loss and curvature x eta along GD, real model (lines) and map (dots), one column each."""
    c = r.config
    n = r.traj_ntk_params.shape[0]
    fig, axes = style.figure(2, n, width=max(2.6 * n, 5.0), height=4.6)
    t = np.arange(r.traj_ntk_params.shape[1])
    for i in range(n):
        top, bottom = axes[i], axes[n + i]
        top.plot(t, r.traj_loss[i], color="k", lw=0.8, label="real model")
        top.plot(t[::5], r.traj_loss_map[i, ::5], "o", ms=2, color="C1", label="map")
        bottom.plot(t, r.traj_sharpness[i], lw=0.8, color="C0", label=style.ETA + "$\\lambda_H$")
        bottom.plot(t[::5], r.traj_ntk_map[i, ::5], "o", ms=2, color="C1",
                    label=style.ETA + "$\\Theta$ (map)")  # fmt: skip
        style.threshold(bottom, 2.0, color="gray")
        bottom.set_ylim(0, 5)
        title = f"$\\kappa$={c.trajectory_kappas[i]:g}, $\\sigma$={c.trajectory_scales[i]:g}"
        style.finish(top, title=title, logy=True, ylabel="loss / $y^2$" if i == 0 else None,
                     legend=i == 0)  # fmt: skip
        style.finish(bottom, xlabel="step", ylabel="curvature x eta" if i == 0 else None,
                     legend=i == 0)  # fmt: skip
    return fig


def draw(r, regimes) -> dict[str, Figure]:
    """``uv_phase_diagram``, ``uv_bifurcation`` and ``uv_trajectories``."""
    return {
        "uv_phase_diagram": phase_diagram(r, regimes),
        "uv_bifurcation": bifurcation(r),
        "uv_trajectories": trajectories(r),
    }
