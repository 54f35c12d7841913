"""Figures of the early-training phase diagram (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ._catapult_core import nanmean

_REGIMES = ("no catapult", "loss catapult", "loss + sharpness catapult", "diverged")
_COLORS = ("tab:blue", "tab:orange", "tab:red", "0.4")
_CURVES = {"c_loss": ("C0", "o"), "c_sharp": ("C3", "s"), "c_barrier": ("C2", "^"),
           "c_max": ("k", "v")}  # fmt: skip


def _regime(cr, diverged):
    """Per (D, W, C): the majority regime over seeds (index into _REGIMES)."""
    code = np.where(cr["loss_catapult"], 1, 0)
    code = np.where(cr["loss_catapult"] & cr["sharp_catapult"], 2, code)
    code = np.where(diverged, 3, code)
    # majority over seeds; ties go to the higher regime
    counts = np.stack([(code == k).sum(-1) for k in range(4)], axis=-1)
    return counts.shape[-1] - 1 - np.argmax(counts[..., ::-1], axis=-1)


def _phase(r, cr) -> Figure:
    fig = Figure(figsize=(8, 5.5), dpi=100)
    ax = fig.subplots()
    dw = r.depths[:, None] / r.widths[None, :]  # (D, W)
    reg = _regime(cr, r.diverged)  # (D, W, C)
    for k, (name, col) in enumerate(zip(_REGIMES, _COLORS, strict=True)):
        i, j, m = np.nonzero(reg == k)
        ax.scatter(r.c[m], dw[i, j], s=28, marker="s", color=col, alpha=0.35, label=name,
                   edgecolors="none")  # fmt: skip
    styles = ("-", "--", ":", "-.")
    for i, d in enumerate(r.depths):  # one set of curves per depth: d and w act separately too
        order = np.argsort(dw[i])
        for name, (col, mk) in _CURVES.items():
            y = nanmean(cr[name][i], axis=-1)[order]
            ok = np.isfinite(y)
            lab = f"<{name}>" if i == 0 else None
            if i > 0 and name == "c_loss":
                lab = f"depth {d}: '{styles[i % 4]}' lines"
            ax.plot(y[ok], dw[i][order][ok], styles[i % 4], marker=mk, color=col, lw=1.5, ms=6,
                    label=lab)  # fmt: skip
    ax.axvline(2.0, color="0.5", lw=3, alpha=0.5, label="c = 2")
    ax.axvline(4.0, color="0.8", lw=3, alpha=0.8, label="c = 4")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set(xlabel="c = eta lambda_0", ylabel="d / w",
           title=f"early phase diagram, {r.config.arch} (solid lines: depth {r.depths[0]}), "
                 f"T = {r.config.num_steps} GD steps")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def _reduction(r, cr) -> Figure:
    fig = Figure(figsize=(8, 5), dpi=100)
    ax = fig.subplots()
    dw = r.depths[:, None] / r.widths[None, :]
    cmap = __import__("matplotlib").colormaps["viridis"]
    lo, hi = np.log(dw.min()), np.log(dw.max())
    for i in range(r.depths.size):
        for j in range(r.widths.size):
            fr = np.where(r.diverged[i, j], np.nan, cr["final_ratio"][i, j])
            col = cmap(0.0 if hi == lo else (np.log(dw[i, j]) - lo) / (hi - lo))
            ax.plot(r.c, nanmean(fr, axis=-1), "o-", ms=3, color=col,
                    label=f"d/w = {r.depths[i]}/{r.widths[j]} = {dw[i, j]:.3g}")  # fmt: skip
    ax.axhline(1.0, color="k", lw=0.8, ls=":", label="lambda_T = lambda_0")
    ax.axvline(2.0, color="k", lw=1, ls="--", label="c = 2")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="c = eta lambda_0", ylabel="lambda_T / lambda_0 (mean over seeds)",
           title="sharpness after T steps: reduction opens up with d/w")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def draw_figures(r, cr) -> dict[str, Figure]:
    """``early_phase_diagram_phases`` and ``early_phase_diagram_sharpness``."""
    return {"early_phase_diagram_phases": _phase(r, cr),
            "early_phase_diagram_sharpness": _reduction(r, cr)}  # fmt: skip
