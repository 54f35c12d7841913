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
figures, measured against each optimizer's own critical ``eta * lambda``.

Example:
  >>> from hessian_lab.studies import momentum
  >>> r = momentum.run(momentum.TINY)  # doctest: +SKIP
  >>> r.median_x_lr / r.critical  # doctest: +SKIP
  array([1.0...])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies._results import load_results, save_results

from . import _common as c
from . import edge_of_stability as eos
from .edge_of_stability import Results

__all__ = ["DEFAULT", "NAME", "TINY", "Config", "Results", "figures", "load", "quadratic_orbit"]
__all__ += ["run", "save", "summary"]

NAME = "momentum"


@dataclasses.dataclass(frozen=True)
class Config(eos.Config):
    """The edge-of-stability Config plus the momentum and the Nesterov learning rates.

    ``lrs`` are the heavy-ball learning rates; ``nesterov_lrs`` (may be empty) those of Nesterov
    momentum with the same ``momentum``. The gradient-flow baseline is off by default
    (``flow_time=0``).
    """

    lrs: tuple[float, ...] = (0.35, 0.4, 0.45)
    nesterov_lrs: tuple[float, ...] = (0.15, 0.2)
    momentum: float = 0.9
    num_steps: int = 1500
    flow_time: float = 0.0
    long_window: int = 150

    def __post_init__(self):
        super().__post_init__()
        eos.need(isinstance(self.momentum, float | int) and 0 <= self.momentum < 1, self,
                 "momentum", "a number in [0, 1)")  # fmt: skip
        nl = np.asarray(self.nesterov_lrs, float)
        eos.need(nl.ndim == 1 and bool(np.all(np.isfinite(nl) & (nl > 0))), self,
                 "nesterov_lrs", "a tuple of positive numbers (may be empty)")  # fmt: skip


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
    groups = [("momentum", config.lrs, config.momentum),
              ("nesterov", config.nesterov_lrs, config.momentum)]  # fmt: skip
    return eos.simulate(config, groups, progress=progress)


def quadratic_orbit(optimizer: str, eta_lambda: float, momentum: float, num_steps: int):
    """Iterate optax's own ``sgd`` on ``L = x^2 / 2`` (lambda = 1, ``eta = eta_lambda``) from x = 1.

    Returns the (num_steps + 1,) iterates; used to check :func:`stability_threshold` numerically.
    """
    import jax.numpy as jnp
    import optax

    opt = optax.sgd(eta_lambda, momentum=momentum, nesterov=optimizer == "nesterov")
    x = jnp.asarray(1.0)
    state = opt.init(x)
    xs = [float(x)]
    for _ in range(num_steps):
        upd, state = opt.update(x, state)  # gradient of x^2/2 is x
        x = optax.apply_updates(x, upd)
        xs.append(float(x))
    return np.asarray(xs)


stability_threshold = c.stability_threshold


def figures(results: Results) -> dict[str, Figure]:
    """Loss, sharpness with each run's threshold, and eta*lambda / threshold vs step."""
    from ._edge_of_stability_plots import draw

    return draw(results, NAME)


def save(results: Results, run_dir: str | Path) -> None:
    """Write ``results`` to ``run_dir`` (config.json, arrays.npz, summary.json; atomic)."""
    save_results(results, run_dir, kind=NAME, summary=summary(results))


def load(run_dir: str | Path) -> Results:
    """Read back what :func:`save` wrote; ``load`` after ``save`` round-trips exactly."""
    return load_results(run_dir, Results, Config)


def summary(results: Results) -> dict[str, float | int | str | bool]:
    """Per run: first step at the threshold, median eta*lambda and its ratio to the threshold."""
    out = eos.summary(results)
    out["heavy_ball_threshold_x_lr"] = c.stability_threshold("momentum", results.config.momentum)
    out["nesterov_threshold_x_lr"] = c.stability_threshold("nesterov", results.config.momentum)
    return out
