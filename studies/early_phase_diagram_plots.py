"""Figures of the early-training phase diagram: the regimes in (c, d/w) and the sharpness at T.

Receives the study's Results (``c``, ``diverged``, ``config.num_steps``), its per-member flags
and critical values (``critical(results)``) and the axes to draw against: ``y`` (D, W), the
vertical value of each cell (the paper's ``d / w``, or the swept argument of the user's
function), ``ylabel`` and ``short`` (its short name: ``d/w``), ``rows`` (a label per row of cells:
``"d = 2"``) and ``name`` (the network); never imports a study. As in Kalra & Barkeshli's figures, ``c`` runs along the
horizontal axis and ``d / w`` along the vertical one.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from . import stats, style

__all__ = ["REGIMES", "draw", "phases", "regime", "sharpness_reduction"]

REGIMES = ("no catapult", "loss catapult", "loss + sharpness catapult", "diverged")
_REGIME_COLORS = ("tab:blue", "tab:orange", "tab:red", "0.4")
_CURVES = {"c_loss": ("C0", "o"), "c_sharp": ("C3", "s"), "c_barrier": ("C2", "^"),
           "c_max": ("k", "v")}  # fmt: skip
_C = "$c = \\eta\\lambda_0$"


def regime(cr: dict, diverged: np.ndarray) -> np.ndarray:
    """Per (D, W, C): the majority regime over seeds (an index into REGIMES; ties go higher)."""
    code = np.where(cr["loss_catapult"], 1, 0)
    code = np.where(cr["loss_catapult"] & cr["sharp_catapult"], 2, code)
    code = np.where(diverged, 3, code)
    counts = np.stack([(code == k).sum(-1) for k in range(len(REGIMES))], axis=-1)
    return len(REGIMES) - 1 - np.argmax(counts[..., ::-1], axis=-1)


def phases(r, cr: dict, axes: dict) -> Figure:
    """Regime squares over (c, d/w) and the seed-averaged critical curves, one set per row."""
    solid = f" (solid lines: {axes['rows'][0]})" if axes["rows"][0] else ""
    fig, (ax,) = style.figure(
        1,
        1,
        height=5.5,
        title=f"early phase diagram, {axes['name']}{solid}, T = {r.config.num_steps} GD steps",
    )
    dw = np.asarray(axes["y"], float)  # (D, W)
    reg = regime(cr, r.diverged)  # (D, W, C)
    for k, (name, col) in enumerate(zip(REGIMES, _REGIME_COLORS, strict=True)):
        i, j, m = np.nonzero(reg == k)
        ax.scatter(r.c[m], dw[i, j], s=28, marker="s", color=col, alpha=0.35, label=name,
                   edgecolors="none")  # fmt: skip
    styles = ("-", "--", ":", "-.")
    for i, row in enumerate(axes["rows"]):  # one set per depth: d and w act separately too
        order = np.argsort(dw[i])
        for name, (col, mk) in _CURVES.items():
            y = stats.nanmean(cr[name][i], axis=-1)[order]
            ok = np.isfinite(y)
            lab = f"<{name}>" if i == 0 else None
            if i > 0 and name == "c_loss":
                lab = f"{row}: '{styles[i % 4]}' lines"
            ax.plot(y[ok], dw[i][order][ok], styles[i % 4], marker=mk, color=col, lw=1.5, ms=6,
                    label=lab)  # fmt: skip
    ax.axvline(2.0, color="0.5", lw=3, alpha=0.5, label="$c = 2$")
    ax.axvline(4.0, color="0.8", lw=3, alpha=0.8, label="$c = 4$")
    ax.set_xscale("log", base=2)
    if np.all(dw > 0):
        ax.set_yscale("log", base=2)
    style.finish(ax, xlabel=_C, ylabel=axes["ylabel"], legend=False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def sharpness_reduction(r, cr: dict, axes: dict) -> Figure:
    """lambda_T / lambda_0 against c for every cell, coloured by its vertical value (d/w, or the
    swept argument); diverged runs left out."""
    fig, (ax,) = style.figure(1, 1, height=5.0, title=f"sharpness after T steps, {axes['name']}")
    dw = np.asarray(axes["y"], float)
    pos = bool(np.all(dw > 0))
    t = np.log(dw) if pos else dw
    lo, hi = t.min(), t.max()
    for i, row in enumerate(axes["rows"]):
        for j in range(dw.shape[1]):
            fr = np.where(r.diverged[i, j], np.nan, cr["final_ratio"][i, j])
            col = colormaps["viridis"](0.0 if hi == lo else (t[i, j] - lo) / (hi - lo))
            lab = f"{row}, {axes['short']} = {dw[i, j]:.3g}".lstrip(", ")
            ls = ("-", "--", ":", "-.")[i % 4]  # one line style per row (depth)
            ax.plot(r.c, stats.nanmean(fr, axis=-1), "o", ls=ls, ms=3, color=col, label=lab)
    style.threshold(ax, 1.0, label="$\\lambda_T = \\lambda_0$")
    ax.axvline(2.0, color="k", lw=1, ls="--", label="$c = 2$")
    ax.set_xscale("log", base=2)
    style.finish(
        ax,
        xlabel=_C,
        ylabel="$\\lambda_T / \\lambda_0$ (mean over seeds)",
        logy=True,
        legend=False,
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def draw(r, cr: dict, axes: dict) -> dict[str, Figure]:
    """``early_phase_diagram_phases`` and ``early_phase_diagram_sharpness``; ``axes``: ``y``
    (D, W), ``ylabel``, ``rows``, ``name`` (module doc)."""
    return {
        "early_phase_diagram_phases": phases(r, cr, axes),
        "early_phase_diagram_sharpness": sharpness_reduction(r, cr, axes),
    }
