"""A ninth study written from docs/dev/studies.md alone: the final loss vs the learning rate.

Test fixture (registered by tests/test_study_contract.py): full-batch GD on a tiny linear
regression, one sweep point per learning rate. The quadratic's curvature is known, so the
verdict compares the measured divergence threshold with 2/lambda_max.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import lr_study_plots
import numpy as np
import optax
from matplotlib.figure import Figure

from hessian_lab import trainer
from hessian_lab.studies import kit
from hessian_lab.studies.kit import knob

NAME, PAPER, DOCS = "lr_study", "the GD stability limit 2/lambda_max", "docs/dev/studies.md"


@dataclasses.dataclass(frozen=True)
class Config:
    """The learning rates and the run length."""

    lrs: tuple[float, ...] = knob((0.5, 1.0, 1.5, 2.5), "learning rates eta, one point each")
    num_steps: int = knob(30, "GD steps per run")

    def __post_init__(self):
        kit.check_rates(self, "lrs")
        kit.check_ints(self, "num_steps")


DEFAULT, TINY = Config(), Config(lrs=(0.5, 2.5), num_steps=20)


@dataclasses.dataclass
class Results:
    config: Any
    lrs: np.ndarray  # (P,)
    final_loss: np.ndarray  # (P,) NaN where the run diverged
    lambda_max: np.ndarray  # () the quadratic's largest Hessian eigenvalue


def _problem():  # L(w) = |x w - y|^2 / (2n): Hessian x^T x / n
    x = jnp.asarray(np.linspace(-1.0, 1.0, 24).reshape(8, 3))
    return (lambda w, b: 0.5 * jnp.mean((b[0] @ w - b[1]) ** 2)), (x, x @ jnp.ones(3))


def points(config: Config) -> list[dict]:
    return [{"lr": float(lr)} for lr in config.lrs]


def run_point(config: Config, point: dict, *, progress=None) -> dict[str, np.ndarray]:
    loss_fn, data = _problem()
    step = trainer.make_step(loss_fn, optax.sgd(point["lr"]))
    res = trainer.train(
        step,
        jnp.zeros(3),
        data,
        num_steps=config.num_steps,
        divergence_threshold=1e3,
        progress=progress,
    )
    last = np.nan if res.history.diverged else float(res.history["loss"][-1])
    return {"final_loss": np.asarray(last)}


def assemble(config: Config, outs: list[dict]) -> Results:
    x = _problem()[1][0]
    lam = np.linalg.eigvalsh(np.asarray(x.T @ x) / x.shape[0])[-1]
    loss = np.asarray([o["final_loss"] for o in outs], float)
    return Results(config, np.asarray(config.lrs, float), loss, np.asarray(lam))


def run(config: Config, *, progress=None) -> Results:
    return assemble(config, [run_point(config, p) for p in points(config)])


METRICS = {
    "final_loss": kit.Metric("training loss after the last step (NaN: diverged)", "loss"),
    "two_over_lambda": kit.Metric("the GD stability limit 2/lambda_max", "lr"),
}


def summary(r: Results) -> dict[str, Any]:
    loss = {f"eta={lr:g}": float(v) for lr, v in zip(r.lrs, r.final_loss, strict=True)}
    return {"final_loss": loss, "two_over_lambda": float(2 / r.lambda_max)}


def verdict(r: Results) -> list[str]:
    stable = r.lrs[np.isfinite(r.final_loss) & (r.final_loss < 1.0)]
    ok = bool(stable.size) and bool(np.all(stable < 2 / r.lambda_max))
    return [kit.compare("largest trained eta", float(stable.max(initial=0)), "theory",
                        f"< 2/lambda_max = {kit.fmt(2 / r.lambda_max)}", ok=ok)]  # fmt: skip


def figures(r: Results) -> dict[str, Figure]:
    return {"lr_study_loss": lr_study_plots.loss_vs_lr(r.lrs, r.final_loss, 2 / r.lambda_max)}


save, load = kit.persistence(NAME, Results, Config, summary)
