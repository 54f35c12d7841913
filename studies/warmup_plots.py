"""Figures of the warmup study: sharpness vs 2/eta_t, trainable range, catapult search, Adam.

Each function receives a Results-like object (``lam0``, ``traj_*``, ``c_trainable``,
``search_estimate``, ``adam_*``, ``precond0``, ``loss_const`` and its ``config``) and the display
names of its parameterisations or optimizers; never imports the study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["adam", "search", "sharpness", "trainability"]

_LAMBDA0 = "$\\lambda_0$"
_TWO_OVER_ETA_T = "$2/\\eta_t$"


def sharpness(r, names) -> Figure:
    """Per parameterisation: sharpness and 2/eta_t (dashed) above, the loss with catapults below."""
    cfg = r.config
    M = len(names)
    fig, axes = style.figure(2, M, width=max(5.2 * M, 6.0), height=6.4, sharex=True)
    steps = np.arange(r.traj_loss.shape[-1])
    for m, name in enumerate(names):
        ax, axl = axes[m], axes[M + m]
        for c, ct in enumerate(cfg.traj_c_trgt):
            col, s, lr = style.color(c), r.traj_sharpness[m, c], r.traj_lr[m, c]
            ok = np.isfinite(s)
            ax.plot(steps[ok], s[ok], "o-", ms=2.5, color=col, label=f"$c_{{trgt}}$={ct:g}")
            with np.errstate(divide="ignore"):
                ax.plot(steps, np.where(lr > 0, 2 / lr, np.nan), "--", color=col, lw=0.9)
            axl.plot(steps, r.traj_loss[m, c], color=col, label=f"$c_{{trgt}}$={ct:g}")
            cat = np.flatnonzero(r.traj_catapult[m, c] > 0)
            if cat.size:
                axl.plot(steps[cat], r.traj_loss[m, c, cat], "x", color=col, ms=4,
                         label="$L_t > L_0$ (catapult)" if c == 0 else None)  # fmt: skip
        style.threshold(ax, r.lam0[m, 0], label=_LAMBDA0)
        ax.axvline(cfg.traj_warmup_steps, color="gray", lw=0.8, label="end of warmup")
        pos = r.traj_sharpness[m][r.traj_sharpness[m] > 0]  # a dead ReLU net has lambda = 0
        lo = (pos.min() if pos.size else r.lam0[m, 0]) / 3
        ax.set_ylim(lo, max(np.nanmax(r.traj_sharpness[m]), r.lam0[m, 0]) * 5)
        style.finish(ax, ylabel=f"{style.SHARPNESS}, {_TWO_OVER_ETA_T} (dashed)", logy=True,
                     title=f"{name}: sharpness vs {_TWO_OVER_ETA_T} (linear warmup, GD)")  # fmt: skip
        style.finish(axl, xlabel="step t", ylabel=f"training loss (MSE, {cfg.normalization})",
                     logy=True)  # fmt: skip
    return fig


def trainability(r, names) -> Figure:
    """Largest trainable c_trgt against the warmup length, eta_init = 0 and from the search."""
    cfg = r.config
    fig, (ax,) = style.figure(1, 1, width=6.0, height=4.2)
    tw = np.maximum(np.asarray(cfg.warmup_grid, float), 0.5)
    for m, name in enumerate(names):
        for i, (mode, ls) in enumerate((("$\\eta_{init}$ = 0", "-"),
                                        ("$\\eta_{init}$ = catapult", "--"))):  # fmt: skip
            ax.plot(tw, r.c_trainable[m, i], ls, marker="o", color=style.color(m),
                    label=f"{name}, {mode}")  # fmt: skip
    style.threshold(ax, 2.0, label="c = 2 ($\\eta = 2/\\lambda_0$)")
    style.finish(ax, xlabel="warmup length $T_{wrm}$ (steps)", logx=True,
                 ylabel="largest trainable $c_{trgt} = \\eta_{trgt}\\lambda_0$",
                 title=f"Trainable range (final loss < {cfg.trainable_fraction:g} x "
                 "constant-predictor loss)")  # fmt: skip
    ax.set_yscale("log", base=2)
    return fig


def search(r, names) -> Figure:
    """The catapult search's estimate / (2/lambda0) against its test steps, per seed."""
    fig, (ax,) = style.figure(1, 1, width=6.0, height=4.2)
    ks = np.asarray(r.config.search_steps)
    for m, name in enumerate(names):
        ratio = r.search_estimate[m] * r.lam0[m][:, None] / 2  # (S, K)
        for j in range(ratio.shape[0]):
            ax.plot(ks, ratio[j], "o-", color=style.color(m), alpha=0.8,
                    label=name if j == 0 else None)  # fmt: skip
    style.threshold(ax, 1.0, label=f"2/{_LAMBDA0} (Lanczos)")
    ax.axhspan(0.8, 1.2, color="gray", alpha=0.15, label="$\\pm$20%")
    style.finish(ax, xlabel="test steps per trial", ylabel=f"catapult estimate / (2/{_LAMBDA0})",
                 title="Loss-catapult search for the critical learning rate", logx=True)  # fmt: skip
    return fig


def adam(r, names) -> Figure:
    """Final loss against eta_trgt (x: diverged), and the preconditioned sharpness of one rate."""
    cfg = r.config
    fig, (ax, axp) = style.figure(1, 2, width=11.0, height=4.2)
    for o, name in enumerate(names):
        for u, (wname, ls) in enumerate((("constant", "-"), ("warmup", "--"))):
            ax.plot(r.adam_eta, r.adam_final_loss[o, u], ls, marker="o", color=style.color(o),
                    label=f"{name}, {wname}")  # fmt: skip
            div = r.adam_diverged[o, u]
            if div.any():
                ax.plot(r.adam_eta[div], np.full(div.sum(), r.loss_const * 2), "x",
                        color=style.color(o), ms=8)  # fmt: skip
    style.threshold(ax, cfg.trainable_fraction * r.loss_const, label="trainable threshold")
    style.finish(ax, xlabel="$\\eta_{trgt}$", logx=True, logy=True,
                 ylabel=f"final training loss after {cfg.adam_steps} steps (x: diverged)",
                 title="Adam vs GI-Adam, with and without warmup (SP)")  # fmt: skip
    a = min(len(r.adam_eta) - 1, len(r.adam_eta) // 2)
    steps = np.arange(r.adam_precond.shape[-1])
    for o, name in enumerate(names):
        for u, (wname, ls) in enumerate((("constant", "-"), ("warmup", "--"))):
            s = r.adam_precond[o, u, a]
            ok = np.isfinite(s)
            axp.plot(steps[ok], s[ok], ls, marker=".", color=style.color(o),
                     label=f"{name}, {wname}")  # fmt: skip
    eta = r.adam_eta[a]
    style.threshold(axp, (2 + 2 * cfg.b1) / ((1 - cfg.b1) * eta),
                    label=f"$(2+2b_1)/((1-b_1)\\eta)$, $\\eta$={eta:.3g}")  # fmt: skip
    ratio = r.precond0[0] / r.precond0[1]
    style.finish(axp, xlabel="step t", ylabel="preconditioned sharpness $\\lambda_{max}(P^{-1}H)$",
                 logy=True, title=f"at init: {names[0]} / {names[1]} = {ratio:.1f} "
                 f"($1/\\sqrt{{1-b_2}}$ = {1 / np.sqrt(1 - cfg.b2):.1f})")  # fmt: skip
    return fig
