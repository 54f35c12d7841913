"""Figures of the block-spectra study: blockwise densities, top eigenvalues, JS heatmaps, means.

Receives a Results-like object (``archs``, ``block_arch``, ``block_names``, ``values``, ``grids``,
``densities``, ``js``, ``mean_js``); never imports a study. Blocks are labelled by their leaf
path's tail (:func:`block_kind`, :func:`short_name`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from . import style

__all__ = ["block_kind", "densities", "draw", "js_heatmaps", "mean_js", "short_name", "top_eigs"]


def block_kind(name: str) -> str:
    """The tensor kind of a block path: ``"['blocks'][1]['attn']['wq']"`` -> ``"wq"``."""
    parts = [q.strip("]'\"") for q in name.split("[") if q]
    if parts[-1] in ("w", "b") and len(parts) > 1:  # mlp / cnn: "['layers'][0]['w']" -> "layers 0"
        return " ".join(parts[:-1]) + (" bias" if parts[-1] == "b" else "")
    if parts[-1] in ("scale", "bias"):  # LayerNorm: "['blocks'][0]['ln1']['scale']" -> "ln scale"
        return "ln " + parts[-1]
    return parts[-1]


def short_name(name: str) -> str:
    """A label for a figure: ``"['blocks'][1]['attn']['wq']"`` -> ``"1.wq"``, else the kind."""
    parts = [q.strip("]'\"") for q in name.split("[") if q]
    if parts[0] == "blocks" and len(parts) > 2:
        return f"{parts[1]}.{block_kind(name)}"
    return block_kind(name)


def _kinds(names) -> tuple[list[str], dict[str, int]]:
    kinds = [block_kind(n) for n in names]
    order = {k: i for i, k in enumerate(dict.fromkeys(kinds))}
    return kinds, order


def densities(r) -> Figure:
    """One panel per architecture: every block's SLQ density (log scale), one colour per kind."""
    fig, axes = style.figure(
        len(r.archs), 1, height=2.8 * len(r.archs), title="Blockwise Hessian spectra at init"
    )
    for a, (ax, arch) in enumerate(zip(axes, r.archs, strict=True)):
        rows = np.flatnonzero(r.block_arch == arch)
        kinds, order = _kinds(r.block_names[rows])
        seen = set()
        for b, kind in zip(rows, kinds, strict=True):
            dens = np.maximum(r.densities[b], 1e-8)
            ax.plot(
                r.grids[a],
                dens,
                color=style.color(order[kind]),
                lw=1.0,
                alpha=0.8,
                label=None if kind in seen else kind,
            )
            seen.add(kind)
        ax.set_ylim(1e-4, None)
        style.finish(
            ax,
            ylabel="density",
            title=f"{arch}: mean JS {r.mean_js[a]:.3f}",
            logy=True,
            legend=False,
        )
        ax.legend(fontsize=7, ncol=min(len(order), 6), loc="upper right")
    axes[-1].set_xlabel("eigenvalue of the diagonal block")
    return fig


def top_eigs(r) -> Figure:
    """The top eigenvalue of every block, per architecture (log scale)."""
    fig, axes = style.figure(
        1, len(r.archs), height=3.6, title="Top eigenvalue of each diagonal block at init"
    )
    for ax, arch in zip(axes, r.archs, strict=True):
        rows = np.flatnonzero(r.block_arch == arch)
        kinds, order = _kinds(r.block_names[rows])
        top = r.values[rows, 0]
        x = np.arange(rows.size)
        ax.bar(x, np.abs(top), color=[style.color(order[k]) for k in kinds])
        ax.set_xticks(x, [short_name(n) for n in r.block_names[rows]], rotation=90, fontsize=7)
        style.finish(ax, title=str(arch), logy=True, legend=False)
    axes[0].set_ylabel(r"$|\lambda_{max}|$ of the block")
    return fig


def js_heatmaps(r) -> Figure:
    """The Jensen-Shannon distance matrix of each architecture's blocks, on one colour scale."""
    fig, axes = style.figure(
        1, len(r.archs), height=4.0, title="Jensen-Shannon distance between block densities"
    )
    im = None
    for ax, arch in zip(axes, r.archs, strict=True):
        rows = np.flatnonzero(r.block_arch == arch)
        d = r.js[np.ix_(rows, rows)]
        im = ax.imshow(d, vmin=0.0, vmax=1.0, cmap="viridis")
        labels = [short_name(n) for n in r.block_names[rows]]
        ax.set_xticks(range(rows.size), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(rows.size), labels, fontsize=6)
        ax.set_title(str(arch), fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="JS distance (base 2)")
    return fig


def mean_js(r) -> Figure:
    """The block heterogeneity (mean off-diagonal JS distance) of each architecture."""
    fig, (ax,) = style.figure(1, 1, height=3.2, width=5.0, title="Block heterogeneity at init")
    x = np.arange(len(r.archs))
    ax.bar(x, r.mean_js, color=[style.color(i) for i in x])
    for i, v in zip(x, r.mean_js, strict=True):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x, [str(a) for a in r.archs])
    ax.set_ylim(0, max(1.0, float(np.nanmax(r.mean_js)) * 1.15))
    style.finish(ax, ylabel="mean JS distance between blocks", legend=False)
    return fig


def draw(r, name: str) -> dict[str, Figure]:
    """``{name}_densities``, ``{name}_top_eigs``, ``{name}_js``, ``{name}_mean_js``."""
    return {
        f"{name}_densities": densities(r),
        f"{name}_top_eigs": top_eigs(r),
        f"{name}_js": js_heatmaps(r),
        f"{name}_mean_js": mean_js(r),
    }
