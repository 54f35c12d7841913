"""Conventions and measurements of the early phase diagram (Kalra & Barkeshli 2023, arXiv 2302.12250).

* **Depth.** The paper's ``d`` counts every layer with weights, the readout included: its
  ``d = 8`` is 7 hidden layers and the readout. ``models.mlp`` counts hidden layers and
  ``models.cnn`` conv layers (a dense readout follows both), so the builders get ``d - 1``.
  :func:`hidden_layers` and :func:`paper_depth` translate either convention.
* **The paper's c_sharp measurement.** Kalra & Barkeshli compare ``lambda_t``, the top Hessian
  eigenvalue of the loss on a 512-example training batch, against ``lambda_0`` on 4096 examples.
  :func:`batch_sharpness` measures ``lambda_t`` on a fresh random batch of ``B`` training
  examples at every measured step; :class:`BatchSharpnessRunner` trains with it in place of the
  full-batch sharpness (``lambda_0`` stays on the whole training set, the larger set).
* **Their numbers.** :data:`PAPER_D8`: the critical values of the authors' own demo run at
  ``d = 8`` (CIFAR-10, one initialisation), for the docs table and the verdict.
* **Old runs.** :func:`stored_config` reads a ``config.json`` written before ``depth_convention``
  existed with the meaning it was saved under (hidden layers).

Example:
  >>> hidden_layers(8, "layers"), hidden_layers(7, "hidden"), paper_depth(7, "hidden")
  (7, 7, 8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_lab import hvp, optim, population, top_eigs
from hessian_lab.callback_protocol import Callback, random_unit

from . import kit, problems, stats

__all__ = ["DEPTH_CONVENTIONS", "PAPER_D8", "BatchSharpnessRunner", "batch_sharpness"]
__all__ += [
    "STORED_DEFAULTS",
    "against_paper",
    "critical",
    "hidden_layers",
    "paper_depth",
    "stored_config",
]

DEPTH_CONVENTIONS = ("layers", "hidden")

# Kalra & Barkeshli's d = 8 ReLU FCN (no biases, He init, SP), CIFAR-10, MSE, SGD with B = 512
# for T = 10 steps, c = 2^(0.1 k), one initialisation: the authors' public demo notebook for the
# paper. c_loss, c_sharp and c_max follow from the runs it prints (lambda_t on 512-example
# batches, lambda_0 on 4096 examples, rule "> 1"); c_barrier is read off its phase-diagram figure
# (+-0.1 in log2 c; at w = 256 no converging run had a barrier and the notebook sets c_barrier =
# c_max).
PAPER_D8: dict[int, dict[str, float]] = {
    256: {"c_loss": 3.25, "c_sharp": 4.92, "c_barrier": 13.93, "c_max": 13.93},
    512: {"c_loss": 3.03, "c_sharp": 4.29, "c_barrier": 6.3, "c_max": 13.0},
    1024: {"c_loss": 2.64, "c_sharp": 4.00, "c_barrier": 6.1, "c_max": 13.93},
    2048: {"c_loss": 2.46, "c_sharp": 3.25, "c_barrier": 5.7, "c_max": 12.13},
}


def hidden_layers(depth: int, convention: str) -> int:
    """Return the builders' depth (hidden MLP layers, or conv layers) of a depth in ``convention``.

    ``"layers"``: ``depth`` counts every layer with weights, the readout included (the paper's
    ``d``), so ``depth - 1``; ``"hidden"``: ``depth`` itself.
    """
    if convention not in DEPTH_CONVENTIONS:
        raise ValueError(f"depth_convention: must be 'layers' or 'hidden', got {convention!r}")
    return int(depth) - 1 if convention == "layers" else int(depth)


def paper_depth(depth: int, convention: str) -> int:
    """Return the paper's ``d`` (layers with weights, readout included) of a depth in ``convention``."""
    return hidden_layers(depth, convention) + 1


def batch_sharpness(
    loss_fn, batch_size: int, *, every: int = 1, num_iters: int = 10, seed: int = 0
) -> Callback:
    """Record ``sharpness``: the top Hessian eigenvalue of the loss on a random training batch.

    At step t the batch is ``batch_size`` examples of the run's training set (``StepInfo.data``)
    drawn without replacement by ``permutation(fold_in(key(seed), t))``: a fresh batch at every
    measurement, the same sequence for every member of a population (as the paper reuses one
    batch sequence for every ``c``). Lanczos, warm-started from the previous top eigenvector.
    Cost: ``num_iters`` Hessian-vector products on ``batch_size`` examples per measurement.

    This is Kalra & Barkeshli's ``lambda_t`` (on 512-example batches; arXiv 2302.12250). By the
    convexity of ``lambda_max`` it is biased upward against the full-data sharpness, the more so
    the smaller the batch, so compared with a ``lambda_0`` on more data it crosses 1 earlier.
    """
    key = jax.random.key(seed)

    def init(params):
        return random_unit(jax.random.key(0), params)

    def update(v0, info):
        n = jax.tree.leaves(info.data)[0].shape[0]
        idx = jax.random.permutation(jax.random.fold_in(key, info.step), n)[:batch_size]
        batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), info.data)
        res = top_eigs(hvp(loss_fn, info.params, batch), v0, k=1, num_iters=num_iters)
        return jax.tree.map(lambda x: x[0], res.vectors), {"sharpness": res.values[0]}

    return Callback(init, update, every)


class BatchSharpnessRunner(problems.CatapultRunner):
    """A :class:`~hessian_lab.studies.problems.CatapultRunner` whose ``lambda_t`` is on batches.

    Same training (full-batch GD at ``eta = c / lambda_0``), ``lambda_0`` (the whole training
    set) and line barrier; the recorded ``sharpness`` is :func:`batch_sharpness` on
    ``sharpness_batch`` examples. Only the population step differs, so it is rebuilt here with
    the other callback (nothing compiles before the first ``train``).
    """

    def __init__(self, problem: problems.Problem, *, sharpness_batch: int, **kwargs: Any):
        super().__init__(problem, **kwargs)
        loss_fn, steps = problem.loss_fn, self.num_steps
        cbs = [
            batch_sharpness(
                loss_fn,
                sharpness_batch,
                every=kwargs.get("sharpness_every", 1),
                num_iters=kwargs.get("lanczos_iters", 10),
            )
        ]
        if self.barrier:
            cbs.append(problems.line_barrier(loss_fn, kwargs["barrier_points"], steps))
        gd = optim.make_optimizer("gd", learning_rate=1.0)
        self.step = population.make_step(
            loss_fn, gd, mode=kwargs.get("mode", "auto"), callbacks=cbs, chunk_size=steps + 1
        )


# a config.json saved before depth_convention existed counted hidden layers: it still does (when
# the study loads it, and when a sweep resumes or merges it through configs.config_from_dict)
STORED_DEFAULTS = {"depth_convention": "hidden"}


def stored_config(config_cls: type, defaults: dict[str, Any]) -> Callable[..., Any]:
    """Build ``config_cls(**fields)`` from a saved config.json, keeping old runs' meaning.

    A field missing from the file was saved before it existed and takes its value in
    ``defaults`` (e.g. ``depth_convention = "hidden"``: ``depths`` counted hidden layers then).
    """

    def build(**fields: Any) -> Any:
        return config_cls(**{**defaults, **fields})

    return build


def critical(r) -> dict[str, np.ndarray]:
    """Compute the study's ``critical``: flags (D, W, C, S) and per-seed critical values (D, W, S).

    A diverged member counts as a loss catapult, a sharpness catapult and a barrier (its loss and
    sharpness blew up, and so does the loss at the end of its segment).
    """
    div = r.diverged
    loss_ratio = stats.max_ratio(r.loss, r.loss[..., 0])
    sharp_ratio = stats.max_ratio(r.sharpness, r.lambda0[:, :, None, :])
    out = {
        "loss_catapult": (loss_ratio > 1) | div,
        "sharp_catapult": (sharp_ratio > r.config.sharp_threshold) | div,
        "barrier": (r.line_ratio > 1) | div,
        "loss_ratio": loss_ratio,
        "sharp_ratio": sharp_ratio,
        "final_ratio": r.sharpness[..., -1] / r.lambda0[:, :, None, :],
    }
    flags = {"c_loss": "loss_catapult", "c_sharp": "sharp_catapult", "c_barrier": "barrier"}
    for name, flag in flags.items():
        out[name] = stats.critical_c(r.c, out[flag])
    out["c_max"] = stats.critical_c(r.c, div, largest_before=True)
    return out


def against_paper(summary: dict, cells, log2_step: float) -> list[str]:
    """Compare the cells at the paper's ``d = 8`` and one of its widths with its numbers.

    ``cells``: ``(label, d, w)`` with the paper's ``d``. ``c_loss`` and ``c_max`` are reproduced
    when within one step of our log2 grid of theirs (``c_max`` is a grid value on both sides).
    """
    out = []
    for lab, d, w in cells:
        ref = PAPER_D8.get(int(w)) if int(d) == 8 else None
        if ref is None:
            continue
        for name in ("c_loss", "c_max"):
            ours = summary[name][lab]
            ok = bool(np.isfinite(ours) and abs(np.log2(ours / ref[name])) <= log2_step + 1e-9)
            out.append(kit.compare(f"{name} at {lab}", ours, "Kalra & Barkeshli's run",
                                   f"{ref[name]:.3g}, within one grid step", ok=ok))  # fmt: skip
    return out
