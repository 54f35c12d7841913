"""The edge of stability of heavy-ball and Nesterov momentum (optax conventions).

Cohen et al. 2021 (arXiv 2103.00065, Appendix on momentum) observe that GD with momentum also
sharpens progressively until the sharpness reaches the stability limit of the *momentum*
iteration on a quadratic, and then hovers there. The limit depends on how the update is written;
for optax's ``sgd(momentum=beta, nesterov=...)``, on ``L = lambda x^2 / 2`` (derivation from the
2 x 2 companion matrix in ``docs/studies/momentum.md``):

* heavy ball, ``v <- beta v + g``, ``x <- x - eta v``: stable iff ``eta lambda < 2 + 2 beta``;
* Nesterov, ``v <- beta v + g``, ``x <- x - eta (beta v + g)``: stable iff
  ``eta lambda < (2 + 2 beta) / (1 + 2 beta)``.

This study is :mod:`hessian_lab.studies.edge_of_stability` with other optimizers: the same
problem, engine (:func:`~hessian_lab.studies.edge_of_stability.simulate`), statistics and
figures (``edge_of_stability_plots``), measured against each optimizer's own critical
``eta * lambda``.

Example:
  >>> from hessian_lab.studies import momentum
  >>> r = momentum.run(momentum.TINY)  # doctest: +SKIP
  >>> r.median_x_lr / r.critical  # doctest: +SKIP
  array([1.0...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from . import edge_of_stability as eos
from . import edge_of_stability_plots as plots
from . import kit, stats
from .edge_of_stability import Results, check_inputs
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["check_inputs", "figures", "load", "quadratic_orbit", "run", "save", "summary"]
__all__ += ["verdict"]

NAME = "momentum"
PAPER = "Cohen et al. 2021, arXiv 2103.00065 (momentum appendix)"
DOCS = "docs/studies/momentum.md"


@dataclasses.dataclass(frozen=True)
class Config(eos.Config):
    """The edge-of-stability Config plus the momentum and the Nesterov learning rates.

    ``lrs`` are the heavy-ball learning rates; ``nesterov_lrs`` (may be empty) those of Nesterov
    momentum with the same ``momentum``. The gradient-flow baseline is off by default
    (``flow_time=0``).
    """

    lrs: tuple[float, ...] = knob((0.35, 0.4, 0.45), "heavy-ball learning rates, one run each")
    nesterov_lrs: tuple[float, ...] = knob((0.15, 0.2), "Nesterov learning rates (may be empty)")
    momentum: float = knob(0.9, "momentum beta of both optimizers, in [0, 1)")
    num_steps: int = 1500
    flow_time: float = 0.0
    long_window: int = 150

    def __post_init__(self):
        super().__post_init__()
        m = self.momentum
        ok = isinstance(m, float | int) and not isinstance(m, bool) and 0 <= m < 1
        need(ok, self, "momentum", "a number in [0, 1)")
        kit.check_rates(self, "nesterov_lrs", allow_empty=True)


DEFAULT = Config()
TINY = Config(
    lrs=(0.45,),
    nesterov_lrs=(),
    num_steps=600,
    sharpness_every=10,
    lanczos_iters=12,
    long_window=100,
)


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Train heavy-ball (``lrs``) and Nesterov (``nesterov_lrs``) runs at ``momentum`` (no I/O)."""
    check_inputs(config)  # what the Config alone cannot know, before any work
    groups = [
        ("momentum", config.lrs, config.momentum),
        ("nesterov", config.nesterov_lrs, config.momentum),
    ]
    return eos.simulate(config, groups, progress=progress)


def quadratic_orbit(optimizer: str, eta_lambda: float, momentum: float, num_steps: int):
    """Iterate optax's own ``sgd`` on ``L = x^2 / 2`` (lambda = 1, ``eta = eta_lambda``) from x = 1.

    Returns the (num_steps + 1,) iterates; used to check :func:`stability_threshold` numerically.
    """
    opt = optax.sgd(eta_lambda, momentum=momentum, nesterov=optimizer == "nesterov")
    x = jnp.asarray(1.0)
    state = opt.init(x)
    xs = [float(x)]
    for _ in range(num_steps):
        upd, state = opt.update(x, state)  # gradient of x^2/2 is x
        x = optax.apply_updates(x, upd)
        xs.append(float(x))
    return np.asarray(xs)


stability_threshold = stats.stability_threshold


def figures(results: Results) -> dict[str, Figure]:
    """Loss, sharpness with each run's threshold, and eta*lambda / threshold vs step."""
    return plots.draw(results, NAME)


METRICS = eos.METRICS | {
    "heavy_ball_threshold_x_lr": kit.Metric("heavy ball's critical eta*lambda, 2 + 2 beta"),
    "nesterov_threshold_x_lr": kit.Metric(
        "Nesterov's critical eta*lambda in optax's form, (2 + 2 beta) / (1 + 2 beta)"
    ),
}


def summary(results: Results) -> dict[str, Any]:
    """The edge-of-stability summary plus both critical values at ``momentum``."""
    out = eos.summary(results)
    out["heavy_ball_threshold_x_lr"] = stats.stability_threshold(
        "momentum", results.config.momentum
    )
    out["nesterov_threshold_x_lr"] = stats.stability_threshold("nesterov", results.config.momentum)
    return out


def verdict(results: Results) -> list[str]:
    """Each run's median eta*lambda against its own optimizer's threshold."""
    b = results.config.momentum
    head = (
        f"Thresholds at beta={b:g} (optax's update, from the companion matrix): heavy ball "
        f"{kit.fmt(stats.stability_threshold('momentum', b))}, Nesterov "
        f"{kit.fmt(stats.stability_threshold('nesterov', b))} (eta*lambda)."
    )
    return [head, *eos.verdict(results)]


save, load = kit.persistence(NAME, Results, Config, summary)
