"""Figures of the adaptive edge of stability: eta lambda_max(P^-1 H) against its threshold.

Receives a Results-like object (``config``, ``record_steps``, ``adam_*``, ``frozen_*``, ``rms_*``)
and the numbers the study computes (thresholds, plateau records); never imports a study.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["draw", "preconditioned", "raw"]

PRECONDITIONED = "$\\eta\\lambda_{max}(P^{-1}H)$"


def _panel(ax, steps, lrs, pre, thr, title, freeze=None) -> None:
    for i, lr in enumerate(lrs[: pre.shape[0]]):
        ax.plot(
            steps[1:], lr * pre[i, 1:], color=style.color(i), lw=1.2, label=f"{style.ETA}={lr:g}"
        )
    style.threshold(ax, thr, label=f"threshold {thr:g}")
    if freeze:
        ax.axvline(freeze, color="0.5", ls=":", label="P frozen")
    ax.set_ylim(0, 1.8 * thr)
    style.finish(ax, xlabel="step", ylabel=PRECONDITIONED, title=title)


def preconditioned(r, *, adam_threshold: float, rmsprop_threshold: float) -> Figure:
    """One panel per optimizer (Adam, frozen-P Adam, RMSProp): ``eta lambda(P^-1 H)`` vs step."""
    c = r.config
    panels = [(c.adam_lrs, r.adam_pre, adam_threshold, f"Adam (b1={c.b1:g}, b2={c.b2:g})", None)]
    if r.frozen_pre.shape[0]:
        panels.append(
            (
                c.adam_lrs,
                r.frozen_pre,
                adam_threshold,
                "Adam, P frozen (EMA momentum kept)",
                c.freeze_step,
            )
        )
    if r.rms_pre.shape[0]:
        panels.append(
            (
                c.rmsprop_lrs,
                r.rms_pre,
                rmsprop_threshold,
                f"RMSProp (optax, decay={c.rmsprop_decay:g})",
                None,
            )
        )
    fig, axes = style.figure(
        1,
        len(panels),
        height=4.0,
        width=max(4.4 * len(panels), 5.0),
        title="Preconditioned sharpness equilibrates at its threshold (step 0 not shown)",
    )
    for ax, panel in zip(axes, panels, strict=True):
        _panel(ax, r.record_steps, *panel)
    return fig


def raw(r, *, adam_threshold: float, plateau: np.ndarray) -> Figure:
    """Raw sharpness (dots: plateau onset, ``plateau[i]`` a record index or -1) and the loss."""
    c = r.config
    fig, (ax0, ax1) = style.figure(1, 2, height=4.0, width=10.0)
    for i, lr in enumerate(c.adam_lrs[: r.adam_sharp.shape[0]]):
        col, lab = style.color(i), f"Adam {style.ETA}={lr:g}"
        ax0.plot(r.record_steps, r.adam_sharp[i], color=col, label=lab)
        k = int(plateau[i])
        if k >= 0:
            onset = f"{PRECONDITIONED} reaches {c.plateau_fraction:g} x {adam_threshold:g}"
            ax0.plot(
                r.record_steps[k],
                r.adam_sharp[i, k],
                "o",
                color=col,
                mec="k",
                label=onset if i == 0 else None,
            )
        ax1.plot(np.arange(r.adam_loss.shape[1]), r.adam_loss[i], color=col, label=lab)
    for i, lr in enumerate(c.rmsprop_lrs[: r.rms_sharp.shape[0]]):
        ax0.plot(
            r.record_steps,
            r.rms_sharp[i],
            color=style.color(i + 5),
            ls="--",
            label=f"RMSProp {style.ETA}={lr:g}",
        )
    style.finish(
        ax0,
        xlabel="step",
        ylabel=style.SHARPNESS,
        title=f"Raw sharpness: free to rise while Adam sits at {adam_threshold:g}",
    )
    style.finish(ax1, xlabel="step", ylabel="training loss", title="Loss (full batch)", logy=True)
    return fig


def draw(r, name: str, *, adam_threshold, rmsprop_threshold, plateau) -> dict[str, Figure]:
    """``{name}_preconditioned`` and ``{name}_raw``."""
    return {
        f"{name}_preconditioned": preconditioned(
            r, adam_threshold=adam_threshold, rmsprop_threshold=rmsprop_threshold
        ),
        f"{name}_raw": raw(r, adam_threshold=adam_threshold, plateau=plateau),
    }
