"""Figures of the stochastic-EoS study (private; see :mod:`hessian_lab.studies.stochastic_eos`)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def _threshold_figure(r) -> Figure:
    fig = Figure(figsize=(6.4, 4.6), dpi=100)
    ax = fig.add_subplot()
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
    ax.plot(b, np.nanmedian(r.lin_eta_div, axis=1), "ko-", label="measured (median over seeds)")
    ax.plot(b, r.lin_pred_trace, "--", color="C0", label=r"$2B/\mathrm{tr}(K)$")
    ax.axhline(2 / float(r.lin_lmax), color="C3", ls=":", label=r"$2/\lambda_{\max}$ (GD)")
    ax.plot(b, r.lin_pred_kernel, "-", color="C2", label="noise kernel $\\mathcal{K}(\\eta)=1$")
    ax.plot(b, r.lin_pred_exact, "-.", color="C1", label="second-moment threshold")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size $B$")
    ax.set_ylabel(r"smallest diverging learning rate $\eta$")
    n, d = r.config.lin_n, r.config.lin_dim
    ax.set_title(f"Linear regression (n={n}, d={d}): SGD instability vs batch size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def _mlp_figure(r) -> Figure:
    fig = Figure(figsize=(12, 4.2), dpi=100)
    axs = fig.subplots(1, 3)
    eta, n, k, o = r.config.mlp_lr, r.config.mlp_n, r.mlp_record_steps, 10
    for i, b in enumerate(r.mlp_batch_sizes):
        lab = "GD" if b == n else f"B={b}"
        lab += " (diverged)" if np.any(r.mlp_diverged[i]) else ""
        c = (n - b) / (b * (n - 1))
        axs[0].plot(k, np.nanmean(r.mlp_sharpness[i], 0), color=f"C{i}", label=lab)
        kern = eta * c * np.nanmean(r.mlp_ntk_trace[i], 0) / (2 * o)
        axs[1].plot(k, kern, color=f"C{i}", label=lab)
        axs[2].semilogy(k, np.nanmean(r.mlp_full_loss[i], 0), color=f"C{i}", label=lab)
    axs[0].axhline(2 / eta, color="k", ls="--", label=r"$2/\eta$")
    axs[0].set_ylabel(r"sharpness $\lambda_{\max}$ (full training set)")
    axs[1].axhline(1.0, color="k", ls="--", label="1")
    axs[1].set_ylabel(r"$\eta\, c_B\, \mathrm{tr}(K) / (2o)$,  $c_B=(n-B)/(B(n-1))$, $o=10$")
    axs[1].set_yscale("log")
    axs[2].set_ylabel("training loss")
    for ax in axs:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"MLP on digits (n={n}), SGD at eta={eta}: sharpness and NTK trace per batch size")
    fig.tight_layout()
    return fig


def make_figures(r) -> dict[str, Figure]:
    """Return ``{"threshold": ..., "mlp": ...}`` (the MLP figure only if that part ran)."""
    figs = {"threshold": _threshold_figure(r)}
    if r.mlp_batch_sizes.size:
        figs["mlp"] = _mlp_figure(r)
    return figs
