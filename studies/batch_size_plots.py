"""Figures of the batch-size study: spectra of mini-batch Hessians, and eta_max against B.

Receives a Results-like object (``batch_sizes``, ``lmax``, ``lmin``, ``lmax_full``,
``lmin_full``, ``density_grid``,
``density``, ``pred_sgd``, ``pred_adam``, ``eta_sgd``, ``eta_adam``, ``config.n_train``) plus the
fits the study computed; never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["draw", "eta", "spectra"]


def _mean(a: np.ndarray) -> np.ndarray:
    return np.nanmean(a.reshape(a.shape[0], -1), axis=1)


def spectra(r, fits: dict, noise) -> Figure:
    """Left: lambda_max and -lambda_min of H_B per batch against B, the means and the spike
    fits, H's values dashed. Right: SLQ densities of one H_B per B beside H's."""
    fig, (ax, ax_d) = style.figure(1, 2, height=4.2, title="Mini-batch Hessian spectra")
    b = r.batch_sizes.astype(float)
    bb = np.geomspace(b[0], b[-1], 200)
    for i, (key, sign, lab) in enumerate(
        ((r.lmax, 1, r"$\lambda_{max}(H_B)$"), (r.lmin, -1, r"$-\lambda_{min}(H_B)$"))
    ):
        col = style.color(i)
        vals = sign * key.reshape(b.size, -1)
        for j in range(b.size):
            v = vals[j][np.isfinite(vals[j])]
            ax.plot(np.full(v.size, b[j]), v, ".", color=col, ms=2, alpha=0.3)
        ax.plot(b, sign * _mean(key), "o-", color=col, ms=4, label=lab + " (mean)")
        fit = fits["lmax" if sign > 0 else "lmin"]
        spike, coef = sign * fit["spike"], sign * fit["noise"]
        ax.plot(bb, spike + coef * noise(bb), ":", color=col,
                label=f"spike fit {spike:.3g} + {coef:.3g} $c_B$")  # fmt: skip
        style.threshold(ax, sign * np.mean(r.lmax_full if sign > 0 else r.lmin_full), color=col)
    style.finish(ax, xlabel="batch size B (dashed: full-data H)", ylabel="eigenvalue",
                 logx=True, logy=True)  # fmt: skip
    n = r.config.n_train
    for j in range(b.size):
        full = int(b[j]) == n
        ax_d.plot(r.density_grid[j], np.maximum(r.density[j], 1e-6),
                  color="k" if full else style.color(j + 2), lw=1.6 if full else 0.9,
                  label="H (full data)" if full else f"$H_B$, B={int(b[j])}")  # fmt: skip
    ax_d.set_ylim(1e-5, None)
    ax_d.set_xscale("symlog", linthresh=1.0)  # the bulk near 0 and the outliers both readable
    style.finish(ax_d, xlabel="eigenvalue", ylabel="SLQ density (one batch, seed 0)", logy=True)
    return fig


def _band(ax, b, eta, col, label, marker):
    lo, hi = (np.nanmin(eta, axis=1), np.nanmax(eta, axis=1)) if eta.size else (None, None)
    med = np.asarray([np.nanmedian(e) if np.isfinite(e).any() else np.nan for e in eta])
    ax.plot(b, med, marker, color=col, ms=5, label=label)
    ax.fill_between(b, lo, hi, color=col, alpha=0.15, lw=0)


def eta(r, slopes: dict) -> Figure:
    """Measured thresholds (markers: median over seeds, band: their range) and predictions
    (lines) against B, SGD and Adam, with each slope over the fit range."""
    fig, (ax,) = style.figure(1, 1, height=4.5, title=r"Maximal learning rate against batch size")
    b = r.batch_sizes.astype(float)
    c = r.config
    for i, (opt, name) in enumerate((("sgd", "SGD"), ("adam", "Adam"))):
        col = style.color(i)
        m, lo, hi = slopes[opt]
        _band(ax, b, getattr(r, f"eta_{opt}"), col,
              f"{name} measured: slope {m:.2f} [{lo:.2f}, {hi:.2f}]", "o")  # fmt: skip
        pred = getattr(r, f"pred_{opt}")
        ax.plot(b, np.nanmedian(pred, axis=1), "--", color=col,
                label=f"{name} predicted: slope {slopes['pred_' + opt][0]:.2f}")  # fmt: skip
        start = np.nanmedian(getattr(r, f"eta_{opt}")[0])
        ref = (1.0, "1") if opt == "sgd" else (0.5, "1/2")
        near = b[b <= 4 * c.fit_max_batch]  # the law is for small B only
        ax.plot(near, start * (near / b[0]) ** ref[0], ":", color=col, lw=0.8,
                label=f"slope {ref[1]} (Granziol et al.)")  # fmt: skip
    ax.axvspan(b[0], c.fit_max_batch, color="0.9", zorder=0, label="fit range")
    style.finish(ax, xlabel="batch size B", ylabel=r"$\eta_{max}$", logx=True, logy=True)
    return fig


def draw(r, name: str, *, fits: dict, noise, slopes: dict) -> dict[str, Figure]:
    """``{name}_spectra`` and ``{name}_eta``."""
    return {f"{name}_spectra": spectra(r, fits, noise), f"{name}_eta": eta(r, slopes)}
