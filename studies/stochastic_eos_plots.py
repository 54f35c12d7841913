"""Figures of the stochastic edge of stability: SGD's divergence rate and the MLP's curvature.

Receives a Results-like object (``config``, ``lin_*``, ``mlp_*``) and the per-batch-size curves
the study computes (diverged members already left out); never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import stats, style

__all__ = ["draw", "mlp", "threshold"]

KERNEL = "$\\eta\\, c_B\\, \\mathrm{tr}(K) / (2o)$"


def threshold(r) -> Figure:
    """The smallest diverging learning rate against the batch size, beside the four predictions."""
    n, d = r.config.lin_n, r.config.lin_dim
    fig, (ax,) = style.figure(
        1,
        1,
        height=4.6,
        width=6.4,
        title=f"Linear regression (n={n}, d={d}): SGD instability vs batch size",
    )
    b = r.lin_batch_sizes
    for s in range(r.lin_eta_div.shape[1]):
        ax.plot(
            b,
            r.lin_eta_div[:, s],
            "o",
            color="0.6",
            ms=4,
            label="measured (each seed)" if s == 0 else None,
        )
    median = np.asarray([stats.nanmedian_or_nan(row) for row in r.lin_eta_div])
    ax.plot(b, median, "ko-", label="measured (median over seeds)")
    ax.plot(b, r.lin_pred_trace, "--", color=style.color(0), label="$2B/\\mathrm{tr}(K)$")
    ax.axhline(2 / float(r.lin_lmax), color=style.color(3), ls=":", label="$2/\\lambda_{max}$ (GD)")
    ax.plot(
        b,
        r.lin_pred_kernel,
        "-",
        color=style.color(2),
        label="noise kernel $\\mathcal{K}(\\eta)=1$",
    )
    ax.plot(b, r.lin_pred_exact, "-.", color=style.color(1), label="second-moment threshold")
    ax.set_xscale("log", base=2)
    style.finish(ax, xlabel="batch size $B$", ylabel=f"smallest diverging {style.ETA}", logy=True)
    return fig


def mlp(r, *, sharpness, kernel, loss, batch) -> Figure:
    """Sharpness (solid) and batch sharpness (dashed), the noise kernel and the loss vs step, one
    colour per batch size.

    ``sharpness``, ``kernel`` (``eta c_B tr(K) / (2o)``), ``loss`` and ``batch`` (batch
    sharpness): (M, K) curves averaged over the members that did not diverge (NaN rows where
    every member diverged).
    """
    eta, n, k = r.config.mlp_lr, r.config.mlp_n, r.mlp_record_steps
    fig, axes = style.figure(
        1,
        3,
        height=4.2,
        width=12.0,
        title=f"MLP on digits (n={n}), SGD at eta={eta:g}: sharpness and NTK trace per batch size",
    )
    for i, b in enumerate(r.mlp_batch_sizes):
        lab = ("GD" if b == n else f"B={b}") + (" (diverged)" if np.any(r.mlp_diverged[i]) else "")
        for ax, curve in zip(axes, (sharpness, kernel, loss), strict=True):
            ax.plot(k, curve[i], color=style.color(i), label=lab)
        if b < n:
            axes[0].plot(k, batch[i], "--", color=style.color(i), label=f"{lab}: batch sharpness")
    style.threshold(axes[0], 2 / eta, label=style.TWO_OVER_ETA)
    style.finish(
        axes[0], xlabel="step", ylabel=style.SHARPNESS + " (solid), batch sharpness (dashed)"
    )
    style.threshold(axes[1], 1.0, label="1")
    style.finish(axes[1], xlabel="step", ylabel=KERNEL + ", $c_B=(n-B)/(B(n-1))$", logy=True)
    style.finish(axes[2], xlabel="step", ylabel="training loss", logy=True)
    return fig


def draw(r, name: str, *, sharpness, kernel, loss, batch) -> dict[str, Figure]:
    """``{name}_threshold`` and, when the MLP part ran, ``{name}_mlp``."""
    figs = {f"{name}_threshold": threshold(r)}
    if r.mlp_batch_sizes.size:
        figs[f"{name}_mlp"] = mlp(r, sharpness=sharpness, kernel=kernel, loss=loss, batch=batch)
    return figs
