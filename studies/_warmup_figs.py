"""Figures of the warmup study (matplotlib, Agg; no pyplot state)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _sharpness(r) -> Figure:
    cfg = r.config
    M = len(cfg.params)
    fig = Figure(figsize=(5.2 * M, 6.4), dpi=100, layout="constrained")
    axes = fig.subplots(2, M, squeeze=False, sharex=True)
    steps = np.arange(r.traj_loss.shape[-1])
    for m, p in enumerate(cfg.params):
        ax, axl = axes[0, m], axes[1, m]
        for c, ct in enumerate(cfg.traj_c_trgt):
            col = _COLORS[c % len(_COLORS)]
            s = r.traj_sharpness[m, c]
            ok = np.isfinite(s)
            ax.plot(steps[ok], s[ok], "o-", ms=2.5, color=col, label=f"sharpness, c_trgt={ct:g}")
            lr = r.traj_lr[m, c]
            with np.errstate(divide="ignore"):
                ax.plot(steps, np.where(lr > 0, 2 / lr, np.nan), "--", color=col,
                        label=f"2/eta_t, c_trgt={ct:g}")  # fmt: skip
            axl.plot(steps, r.traj_loss[m, c], color=col, label=f"c_trgt={ct:g}")
            cat = np.flatnonzero(r.traj_catapult[m, c] > 0)
            if cat.size:
                axl.plot(steps[cat], r.traj_loss[m, c, cat], "x", color=col, ms=4,
                         label="L_t > L_0 (catapult)" if c == 0 else None)  # fmt: skip
        ax.axhline(r.lam0[m, 0], color="k", lw=0.8, ls=":", label="lambda0")
        ax.axvline(cfg.traj_warmup_steps, color="grey", lw=0.8, label="end of warmup")
        ax.set_yscale("log")
        pos = r.traj_sharpness[m][r.traj_sharpness[m] > 0]  # a dead ReLU net has lambda = 0
        lo = (pos.min() if pos.size else r.lam0[m, 0]) / 3
        ax.set_ylim(lo, max(np.nanmax(r.traj_sharpness[m]), r.lam0[m, 0]) * 5)
        ax.set_title(f"{p.upper()}: sharpness vs 2/eta_t (linear warmup, GD)")
        ax.set_ylabel("lambda_t,  2/eta_t")
        ax.legend(fontsize=7)
        axl.set_yscale("log")
        axl.set_xlabel("step t")
        axl.set_ylabel(f"training loss (MSE, {cfg.normalization})")
        axl.legend(fontsize=7)
    return fig


def _trainability(r) -> Figure:
    cfg = r.config
    fig = Figure(figsize=(6.0, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    tw = np.maximum(np.asarray(cfg.warmup_grid, float), 0.5)
    for m, p in enumerate(cfg.params):
        for i, (mode, ls) in enumerate((("eta_init = 0", "-"), ("eta_init = catapult", "--"))):
            ax.plot(tw, r.c_trainable[m, i], ls, marker="o", color=_COLORS[m],
                    label=f"{p.upper()}, {mode}")  # fmt: skip
    ax.axhline(2.0, color="k", lw=0.8, ls=":", label="c = 2 (eta = 2/lambda0)")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlabel("warmup length T_wrm (steps)")
    ax.set_ylabel("largest trainable c_trgt = eta_trgt lambda0")
    ax.set_title(
        f"Trainable range (final loss < {cfg.trainable_fraction:g} x constant-predictor loss)"
    )
    ax.legend(fontsize=8)
    return fig


def _search(r) -> Figure:
    cfg = r.config
    fig = Figure(figsize=(6.0, 4.2), dpi=100, layout="constrained")
    ax = fig.subplots()
    ks = np.asarray(cfg.search_steps)
    for m, p in enumerate(cfg.params):
        ratio = r.search_estimate[m] * r.lam0[m][:, None] / 2  # (S, K)
        for j in range(ratio.shape[0]):
            ax.plot(ks, ratio[j], "o-", color=_COLORS[m], alpha=0.8,
                    label=f"{p.upper()}" if j == 0 else None)  # fmt: skip
    ax.axhline(1.0, color="k", lw=1, label="2/lambda0 (Lanczos)")
    ax.axhspan(0.8, 1.2, color="grey", alpha=0.15, label="+-20%")
    ax.set_xscale("log")
    ax.set_xlabel("test steps per trial")
    ax.set_ylabel("catapult estimate / (2/lambda0)")
    ax.set_title("Loss-catapult search for the critical learning rate")
    ax.legend(fontsize=8)
    return fig


def _adam(r) -> Figure:
    cfg = r.config
    fig = Figure(figsize=(11.0, 4.2), dpi=100, layout="constrained")
    ax, axp = fig.subplots(1, 2)
    names = ("Adam", "GI-Adam")
    for o in range(2):
        for u, (wname, ls) in enumerate((("constant", "-"), ("warmup", "--"))):
            ax.plot(r.adam_eta, r.adam_final_loss[o, u], ls, marker="o", color=_COLORS[o],
                    label=f"{names[o]}, {wname}")  # fmt: skip
            div = r.adam_diverged[o, u]
            if div.any():
                ax.plot(r.adam_eta[div], np.full(div.sum(), r.loss_const * 2), "x",
                        color=_COLORS[o], ms=8)  # fmt: skip
    ax.axhline(cfg.trainable_fraction * r.loss_const, color="k", ls=":", lw=0.8,
               label="trainable threshold")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eta_trgt")
    ax.set_ylabel(f"final training loss after {cfg.adam_steps} steps (x: diverged)")
    ax.set_title("Adam vs GI-Adam, with and without warmup (SP)")
    ax.legend(fontsize=8)
    a = min(len(r.adam_eta) - 1, len(r.adam_eta) // 2)
    steps = np.arange(r.adam_precond.shape[-1])
    for o in range(2):
        for u, ls in enumerate(("-", "--")):
            s = r.adam_precond[o, u, a]
            ok = np.isfinite(s)
            axp.plot(steps[ok], s[ok], ls, marker=".", color=_COLORS[o],
                     label=f"{names[o]}, {('constant', 'warmup')[u]}")  # fmt: skip
    eta = r.adam_eta[a]
    bound = (2 + 2 * cfg.b1) / ((1 - cfg.b1) * eta)
    axp.axhline(bound, color="k", ls=":", label=f"(2+2b1)/((1-b1) eta_trgt), eta={eta:.3g}")
    axp.set_yscale("log")
    axp.set_xlabel("step t")
    axp.set_ylabel("preconditioned sharpness lambda_max(P^-1 H)")
    ratio = r.precond0[0] / r.precond0[1]
    axp.set_title(f"at init: Adam / GI-Adam = {ratio:.1f} (1/sqrt(1-b2) = "
                  f"{1 / np.sqrt(1 - cfg.b2):.1f})")  # fmt: skip
    axp.legend(fontsize=7)
    return fig


def draw(r) -> dict[str, Figure]:
    """Return the study's figures by name."""
    return {
        "sharpness": _sharpness(r),
        "trainability": _trainability(r),
        "catapult_search": _search(r),
        "adam": _adam(r),
    }
