"""Figures of the catapult study (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

_LABELS = {"uv": "linear net (UV, y = 0)", "mlp": "ReLU MLP (NTK param.)"}


def _pick(c: np.ndarray, div: np.ndarray) -> list[int]:
    """A lazy, two catapult and one diverging c (indices), as available."""
    want = [1.5, 2.6, 3.4, 1e9]
    idx = []
    for w in want:
        if w > 1e8:
            d = np.flatnonzero(div)
            j = int(d[0]) if d.size else None
        else:
            j = int(np.argmin(np.abs(np.log(c / w))))
        if j is not None and j not in idx:
            idx.append(j)
    return idx


def _trajectories(r, fams) -> Figure:
    fig = Figure(figsize=(11, 4.2 * len(fams)), dpi=100)
    axes = fig.subplots(len(fams), 2, squeeze=False)
    for row, fam in enumerate(fams):
        c = getattr(r, f"{fam}_c")
        loss = getattr(r, f"{fam}_loss")[-1, :, 0]  # widest, first seed
        lam = getattr(r, f"{fam}_sharpness")[-1, :, 0]
        eta = getattr(r, f"{fam}_eta")[-1, :, 0]
        div = getattr(r, f"{fam}_diverged")[-1, :, 0]
        w = int(getattr(r, f"{fam}_widths")[-1])
        a, b = axes[row]
        for j in _pick(c, div):
            lab = f"c = {c[j]:.2f}" + (" (diverged)" if div[j] else "")
            a.semilogy(loss[j] / loss[j, 0], label=lab)
            t = np.flatnonzero(np.isfinite(lam[j]))
            b.plot(t, eta[j] * lam[j, t], "o-", ms=3, label=lab)
        a.axhline(1.0, color="k", lw=0.8, ls=":", label="L_0")
        b.axhline(2.0, color="r", lw=1, ls="--", label="eta lambda = 2")
        a.set(xlabel="step", ylabel="L_t / L_0", title=f"{_LABELS[fam]}, width {w}: loss")
        b.set(xlabel="step", ylabel="eta * sharpness", title="sharpness in units of 2/eta")
        b.set_ylim(0, max(4.5, 1.1 * float(np.nanmax(c[~div])) if (~div).any() else 4.5))
        a.legend(fontsize=8)
        b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _regimes(r, fams, critical) -> Figure:
    fig = Figure(figsize=(11, 4.2 * len(fams)), dpi=100)
    axes = fig.subplots(len(fams), 2, squeeze=False)
    for row, fam in enumerate(fams):
        cr = critical(r, fam)
        c = getattr(r, f"{fam}_c")
        widths = getattr(r, f"{fam}_widths")
        div = getattr(r, f"{fam}_diverged")
        a, b = axes[row]
        for i, w in enumerate(widths):
            ratio = np.where(div[i], np.nan, cr["loss_ratio"][i])
            a.loglog(c, _mean(ratio), "o-", ms=3, label=f"width {w}")
            b.semilogx(c, _mean(np.where(div[i], np.nan, cr["final_x_lr"][i])), "o-", ms=3,
                       label=f"width {w}")  # fmt: skip
            cm = _mean(cr["c_max"][i][None])[0]
            if np.isfinite(cm):
                a.axvline(cm, color=a.lines[-1].get_color(), lw=0.8, ls=":")
        for ax in (a, b):
            ax.axvline(2.0, color="k", lw=1, ls="--", label="c = 2")
            ax.axvline(4.0, color="gray", lw=1, ls="-.", label="c = 4")
        b.plot(c, c, color="0.7", lw=0.8, label="eta lambda_T = c (lazy)")
        b.axhline(2.0, color="r", lw=1, ls="--", label="eta lambda = 2")
        a.axhline(1.0, color="k", lw=0.6, ls=":")
        a.set(xlabel="c = eta lambda_0", ylabel="max_t L_t / L_0 (mean over seeds)",
              title=f"{_LABELS[fam]}: loss catapult (dotted: measured c_max)")  # fmt: skip
        b.set(xlabel="c = eta lambda_0", ylabel="eta lambda_T", title="final sharpness x eta")
        b.set_ylim(0, 4.5)
        a.legend(fontsize=7)
        b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _mean(a):
    a = np.asarray(a, float)
    n = np.isfinite(a).sum(-1)
    s = np.where(np.isfinite(a), a, 0.0).sum(-1)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _time(r, critical) -> Figure:
    fig = Figure(figsize=(6.5, 4.5), dpi=100)
    ax = fig.subplots()
    cr = critical(r, "uv")
    c, widths = r.uv_c, r.uv_widths
    for j in np.flatnonzero((c > 2) & (c < 4)):
        t = np.where(cr["t_peak"][:, j] >= 0, cr["t_peak"][:, j], np.nan).astype(float)
        m = _mean(t)
        ok = np.isfinite(m)
        if ok.sum() < 1:
            continue
        line = ax.semilogx(widths[ok], m[ok], "o", label=f"c = {c[j]:.2f}")[0]
        if ok.sum() >= 2:  # theory: slope 1 / (2 ln(c - 1)) per ln(width); intercept fitted
            s = 1.0 / (2.0 * np.log(c[j] - 1.0))
            b0 = np.mean(m[ok] - s * np.log(widths[ok]))
            ww = np.geomspace(widths[ok].min(), widths[ok].max(), 20)
            ax.semilogx(ww, b0 + s * np.log(ww), "--", color=line.get_color(), lw=1)
    ax.set(xlabel="width n", ylabel="step of the loss peak (mean over seeds)",
           title="catapult time ~ ln(n) / (2 ln(c-1)) (dashed)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_figures(r, critical) -> dict[str, Figure]:
    """``catapult_trajectories``, ``catapult_regimes``, ``catapult_time``."""
    fams = [f for f in ("uv", "mlp") if getattr(r, f"{f}_widths").size]
    figs = {"catapult_trajectories": _trajectories(r, fams),
            "catapult_regimes": _regimes(r, fams, critical)}  # fmt: skip
    if r.uv_widths.size:
        figs["catapult_time"] = _time(r, critical)
    return figs
