"""Figures of the catapult study: trajectories, the regimes against c, catapult time vs width.

Receives the study's Results (per family ``<fam>_widths``, ``_c``, ``_eta``, ``_loss``,
``_sharpness``, ``_diverged``), each family's critical values (``loss_ratio``, ``final_x_lr``,
``c_max``, ``t_peak``) and labels; never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import stats, style

__all__ = ["C_LABEL", "draw", "regimes", "time", "trajectories"]

C_LABEL = "$c = \\eta\\lambda_0$"


def _pick(c: np.ndarray, div: np.ndarray) -> list[int]:
    """Indices of a lazy c, two catapult c and the first diverging one, as available."""
    idx = [int(np.argmin(np.abs(np.log(c / w)))) for w in (1.5, 2.6, 3.4)]
    d = np.flatnonzero(div)
    idx += [int(d[0])] if d.size else []
    return list(dict.fromkeys(idx))


def _width(w: int) -> str:
    # a user problem without a width argument is recorded as width 0: the model as given
    return f"width {w}" if w > 0 else "the model as given"


def _vlines(ax) -> None:
    ax.axvline(2.0, color="k", lw=1, ls="--", label="$c = 2$")
    ax.axvline(4.0, color="0.5", lw=1, ls="-.", label="$c = 4$")


def trajectories(r, fams: list[str], labels: dict[str, str]) -> Figure:
    """Per family, at the largest width (first seed): L_t / L_0 and eta lambda_t along GD."""
    fig, axes = style.figure(len(fams), 2, height=4.2 * len(fams), width=11.0)
    for row, fam in enumerate(fams):
        c, div = getattr(r, f"{fam}_c"), getattr(r, f"{fam}_diverged")[-1, :, 0]
        loss = getattr(r, f"{fam}_loss")[-1, :, 0]
        lam = getattr(r, f"{fam}_sharpness")[-1, :, 0]
        eta = getattr(r, f"{fam}_eta")[-1, :, 0]
        w = int(getattr(r, f"{fam}_widths")[-1])
        a, b = axes[2 * row], axes[2 * row + 1]
        for k, j in enumerate(_pick(c, div)):
            lab = f"$c$ = {c[j]:.2f}" + (" (diverged)" if div[j] else "")
            a.plot(loss[j] / loss[j, 0], color=style.color(k), label=lab)
            t = np.flatnonzero(np.isfinite(lam[j]))
            b.plot(t, eta[j] * lam[j, t], "o-", ms=3, color=style.color(k), label=lab)
        style.threshold(a, 1.0, label="$L_0$")
        style.threshold(b, 2.0, color="r", label="$\\eta\\lambda = 2$")
        top = 1.1 * float(np.nanmax(c[~div])) if (~div).any() else 4.5
        b.set_ylim(0, max(4.5, top))
        title = f"{labels[fam]}, {_width(w)}: loss"
        style.finish(a, xlabel="step", ylabel="$L_t / L_0$", title=title, logy=True)
        style.finish(b, xlabel="step", ylabel=style.ETA_LAMBDA, title="sharpness in units of 1/eta")
    return fig


def regimes(r, fams: list[str], critical: dict[str, dict], labels: dict[str, str]) -> Figure:
    """Per family: max_t L_t / L_0 and eta lambda_T against c, one curve per width (seed means)."""
    fig, axes = style.figure(len(fams), 2, height=4.2 * len(fams), width=11.0)
    for row, fam in enumerate(fams):
        cr, c = critical[fam], getattr(r, f"{fam}_c")
        div = getattr(r, f"{fam}_diverged")
        a, b = axes[2 * row], axes[2 * row + 1]
        for i, w in enumerate(getattr(r, f"{fam}_widths")):
            col, lab = style.color(i), _width(int(w))
            ratio = np.where(div[i], np.nan, cr["loss_ratio"][i])
            a.plot(c, stats.nanmean(ratio, axis=-1), "o-", ms=3, color=col, label=lab)
            final = np.where(div[i], np.nan, cr["final_x_lr"][i])
            b.plot(c, stats.nanmean(final, axis=-1), "o-", ms=3, color=col, label=lab)
            cm = stats.nanmean(cr["c_max"][i])
            if np.isfinite(cm):
                a.axvline(float(cm), color=col, lw=0.8, ls=":")
        for ax in (a, b):
            _vlines(ax)
        b.plot(c, c, color="0.7", lw=0.8, label="$\\eta\\lambda_T = c$ (lazy)")
        style.threshold(b, 2.0, color="r", label="$\\eta\\lambda = 2$")
        style.threshold(a, 1.0)
        b.set_ylim(0, 4.5)
        title = f"{labels[fam]}: loss catapult (dotted: measured $c_{{max}}$)"
        style.finish(
            a,
            xlabel=C_LABEL,
            ylabel="$\\max_t L_t / L_0$ (mean over seeds)",
            title=title,
            logx=True,
            logy=True,
        )
        style.finish(
            b,
            xlabel=C_LABEL,
            ylabel="$\\eta\\lambda_T$",
            title="final sharpness x eta (diverged runs left out)",
            logx=True,
        )
    return fig


def time(widths: np.ndarray, c: np.ndarray, t_peak: np.ndarray) -> Figure:
    """Step of the loss peak (mean over seeds) against width, for c in (2, 4), with the theory.

    ``t_peak``: (W, C, S), -1 where there was no catapult. Dashed: slope ``1 / (2 ln(c - 1))``
    per ``ln(width)``, intercept fitted.
    """
    fig, (ax,) = style.figure(1, 1, height=4.5, width=6.5)
    for k, j in enumerate(np.flatnonzero((c > 2) & (c < 4))):
        m = stats.nanmean(np.where(t_peak[:, j] >= 0, t_peak[:, j], np.nan), axis=-1)
        ok = np.isfinite(m)
        if not ok.any():
            continue
        col = style.color(k)
        ax.plot(widths[ok], m[ok], "o", color=col, label=f"$c$ = {c[j]:.2f}")
        if ok.sum() >= 2:
            s = 1.0 / (2.0 * np.log(c[j] - 1.0))
            b0 = np.mean(m[ok] - s * np.log(widths[ok]))
            ww = np.geomspace(widths[ok].min(), widths[ok].max(), 20)
            ax.plot(ww, b0 + s * np.log(ww), "--", color=col, lw=1)
    style.finish(
        ax,
        xlabel="width $n$",
        ylabel="step of the loss peak (mean over seeds)",
        title="catapult time ~ ln(n) / (2 ln(c-1)) (dashed)",
        logx=True,
    )
    return fig


def draw(r, critical: dict[str, dict], labels: dict[str, str]) -> dict[str, Figure]:
    """``catapult_trajectories``, ``catapult_regimes`` and (linear net) ``catapult_time``."""
    fams = [f for f in ("uv", "mlp") if getattr(r, f"{f}_widths").size]
    figs = {
        "catapult_trajectories": trajectories(r, fams, labels),
        "catapult_regimes": regimes(r, fams, critical, labels),
    }
    if r.uv_widths.size:
        figs["catapult_time"] = time(r.uv_widths, r.uv_c, critical["uv"]["t_peak"])
    return figs
