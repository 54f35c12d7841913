"""One plot style for every study: figure factory, run colours, threshold lines, legends.

Each study's ``<name>_plots.py`` builds its figures from these, so every report looks alike:
a constrained-layout :class:`~matplotlib.figure.Figure` (no pyplot state), one colour per run that
its threshold line shares, dashed thresholds, small legends and grid lines, and math labels
written once here.

Example:
  >>> from hessian_lab.studies import style
  >>> fig, (ax,) = style.figure(1, 1)
  >>> style.threshold(ax, 2.0, color=style.color(0), label=style.TWO_OVER_ETA)
  >>> style.finish(ax, xlabel="step", ylabel=style.SHARPNESS)
  >>> len(ax.lines)
  1
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "ETA",
    "ETA_LAMBDA",
    "SHARPNESS",
    "TWO_OVER_ETA",
    "color",
    "figure",
    "finish",
    "threshold",
]

# Math labels, written once.
ETA = "$\\eta$"
SHARPNESS = "sharpness $\\lambda_{max}$"
ETA_LAMBDA = "$\\eta\\lambda_{max}$"
TWO_OVER_ETA = "$2/\\eta$"

_WIDTH = 8.5  # inches: one column of a report page
_PANEL_HEIGHT = 3.0


def figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    height: float | None = None,
    width: float = _WIDTH,
    sharex: bool = False,
    title: str | None = None,
) -> tuple[Figure, list[Axes]]:
    """A new figure and its axes as a flat list (row-major), sized for a report page."""
    fig = Figure(
        figsize=(width, height or max(_PANEL_HEIGHT * nrows, 3.5)), dpi=100, layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    if title:
        fig.suptitle(title)
    return fig, list(np.ravel(axes))


def color(i: int) -> str:
    """The colour of run ``i``: its curves and its threshold line share it."""
    return f"C{int(i) % 10}"


def threshold(ax: Axes, y: float, *, color: str = "k", label: str | None = None) -> None:
    """A dashed horizontal threshold line (e.g. ``2/eta``) in a run's colour."""
    ax.axhline(y, color=color, ls="--", lw=0.9, label=label)


def finish(
    ax: Axes,
    *,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    legend: bool = True,
) -> None:
    """Labels, log scales, a light grid and (if anything is labelled) a small legend."""
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both" if (logx or logy) else "major")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
