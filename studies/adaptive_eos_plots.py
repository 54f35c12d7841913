"""Figures of the adaptive-EoS study (private; see :mod:`hessian_lab.studies.adaptive_eos`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def _panel(ax, steps, lrs, pre, thr, title, freeze=None):
    for i, lr in enumerate(lrs[: pre.shape[0]]):
        ax.plot(steps[1:], lr * pre[i, 1:], color=f"C{i}", lw=1.2, label=f"eta={lr:g}")
    ax.axhline(thr, color="k", ls="--", label=f"threshold {thr:g}")
    if freeze:
        ax.axvline(freeze, color="0.5", ls=":", label="P frozen")
    ax.set_ylim(0, 1.8 * thr)
    ax.set_xlabel("step")
    ax.set_ylabel(r"$\eta\,\lambda_{\max}(P^{-1}H)$")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _preconditioned_figure(r, thr) -> Figure:
    c = r.config
    panels = [("adam", c.adam_lrs, r.adam_pre, thr, f"Adam (b1={c.b1:g}, b2={c.b2:g})", None)]
    if r.frozen_pre.shape[0]:
        panels.append(("frozen", c.adam_lrs, r.frozen_pre, thr,
                       "Adam, P frozen (EMA momentum kept)", c.freeze_step))  # fmt: skip
    if r.rms_pre.shape[0]:
        panels.append(("rms", c.rmsprop_lrs, r.rms_pre, 2.0,
                       f"RMSProp (optax, decay={c.rmsprop_decay:g})", None))  # fmt: skip
    fig = Figure(figsize=(4.4 * len(panels), 4.0), dpi=100)
    axs = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (_, lrs, pre, t, title, fr) in zip(axs, panels, strict=True):
        _panel(ax, r.record_steps, lrs, pre, t, title, fr)
    fig.suptitle("Preconditioned sharpness equilibrates at its threshold (step 0 not shown)")
    fig.tight_layout()
    return fig


def _raw_figure(r, thr) -> Figure:
    c = r.config
    fig = Figure(figsize=(10, 4.0), dpi=100)
    ax0, ax1 = fig.subplots(1, 2)
    from .adaptive_eos import plateau_record

    for i, lr in enumerate(c.adam_lrs[: r.adam_sharp.shape[0]]):
        ax0.plot(r.record_steps, r.adam_sharp[i], color=f"C{i}", label=f"Adam eta={lr:g}")
        k = plateau_record(r, i)
        if k >= 0:
            lab = (
                rf"$\eta\lambda(P^{{-1}}H)$ reaches {c.plateau_fraction:g} x {thr:g}"
                if i == 0
                else None
            )
            ax0.plot(r.record_steps[k], r.adam_sharp[i, k], "o", color=f"C{i}", mec="k", label=lab)
        ax1.semilogy(np.arange(r.adam_loss.shape[1]), r.adam_loss[i], color=f"C{i}",
                     label=f"Adam eta={lr:g}")  # fmt: skip
    for i, lr in enumerate(c.rmsprop_lrs[: r.rms_sharp.shape[0]]):
        ax0.plot(r.record_steps, r.rms_sharp[i], color=f"C{i + 5}", ls="--",
                 label=f"RMSProp eta={lr:g}")  # fmt: skip
    ax0.set_xlabel("step")
    ax0.set_ylabel(r"raw sharpness $\lambda_{\max}(H)$")
    ax0.set_title("Raw sharpness: free to rise while Adam sits at 38")
    ax0.legend(fontsize=8)
    ax0.grid(alpha=0.3)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    ax1.set_title("Loss (full batch)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def make_figures(r) -> dict[str, Figure]:
    """Return ``{"preconditioned": ..., "raw": ...}``."""
    thr = (2.0 + 2.0 * r.config.b1) / (1.0 - r.config.b1)
    return {"preconditioned": _preconditioned_figure(r, thr), "raw": _raw_figure(r, thr)}
