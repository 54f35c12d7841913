"""Figures of the lr_study fixture: they receive arrays, never the study."""

from matplotlib.figure import Figure

from hessian_lab.studies import style


def loss_vs_lr(lrs, final_loss, limit: float) -> Figure:
    """Final loss against the learning rate, with the stability limit dashed."""
    fig, (ax,) = style.figure()
    ax.plot(lrs, final_loss, "o-", color=style.color(0), label="GD")
    ax.axvline(limit, color="k", ls="--", label="$2/\\lambda_{max}$")
    style.finish(ax, xlabel=style.ETA, ylabel="final loss", logy=True)
    return fig
