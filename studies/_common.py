"""Shared helpers for the edge-of-stability family of studies (GD, momentum, and friends).

Three kinds of helpers, all stable API for other studies (``adaptive_eos``, ``stochastic_eos``,
``warmup``, ...):

* **problems** -- :func:`make_problem` builds the default full-batch problem: an MLP on a fixed
  subset of the built-in sklearn digits (or, given a path, the first ``n`` CIFAR-10 images, the
  "cifar10-5k" setting of Cohen et al. 2021, arXiv 2103.00065), one-hot targets, MSE with the
  normalisation named explicitly. The same arguments return the *same* ``loss_fn`` object, so a
  second run in one process reuses the trainer's compiled program.
* **thresholds** -- :func:`stability_threshold` gives the critical ``eta * lambda`` of a quadratic
  under GD (2), heavy-ball momentum (``2 + 2 beta``) and Nesterov momentum in optax's form
  (``(2 + 2 beta) / (1 + 2 beta)``); see ``docs/studies/momentum.md`` for the derivation.
* **statistics** -- on per-step arrays as the trainer records them (NaN where a callback did not
  run): :func:`first_reach` (the first step the sharpness reaches a threshold),
  :func:`rose_before` (progressive sharpening before it), :func:`median_after` (median of
  ``eta * lambda`` over the rest of the run), :func:`loss_oscillation` (the loss decreases over long
  windows while it is non-monotone over short ones) and :func:`eos_stats`, which bundles them.

Example:
  >>> from hessian_lab.studies import _common as c
  >>> c.stability_threshold("momentum", 0.9)
  3.8
  >>> import numpy as np
  >>> lam = np.array([1.0, np.nan, 1.5, np.nan, 2.1, np.nan, 2.0, np.nan, 2.2])
  >>> c.first_reach(lam, 2.0), c.rose_before(lam, 4)
  (4, True)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from hessian_lab import callbacks, losses, models, optim, population
from hessian_lab import data as hd

__all__ = [
    "Problem",
    "Runs",
    "eos_stats",
    "first_reach",
    "gradient_flow",
    "loss_oscillation",
    "make_problem",
    "median_after",
    "rose_before",
    "stability_threshold",
    "train_runs",
]

THRESHOLD_OPTIMIZERS = ("gd", "momentum", "nesterov")


class Problem(NamedTuple):
    """A full-batch training problem.

    Attributes:
      model: the ``hessian_lab.models.Model`` (``init(key)``, ``apply(params, x)``).
      loss_fn: ``loss_fn(params, (x, y)) -> scalar``, MSE with the given normalisation.
      data: ``(x, y)`` as jax arrays of the default float dtype; ``y`` one-hot ``(n, 10)``.
      description: a one-line human description (dataset, n, architecture, loss).
    """

    model: Any
    loss_fn: Any
    data: tuple
    description: str


def make_problem(
    *,
    n_train: int,
    depth: int,
    width: int,
    activation: str = "tanh",
    param: str = "sp",
    normalization: str = "per_example",
    cifar_path: str | None = None,
    center: bool = True,
) -> Problem:
    """Build the MLP / MSE full-batch problem on digits (default) or CIFAR-10 (given a path).

    Inputs are scaled to [0, 1] and (``center``) centred per feature over the kept examples, as
    Cohen et al. do for cifar10-5k; targets are one-hot. The result is cached per arguments and
    float dtype, so repeated calls return the same ``loss_fn`` object (no retrace in the trainer).

    Args:
      n_train: number of leading training examples kept (digits has 1797).
      depth, width, activation, param: passed to ``hessian_lab.models.mlp``.
      normalization: "per_example" (``1/(2n) sum ||f - y||^2``, Cohen et al.) or "per_output"
        (also divided by the 10 outputs, Kalra & Barkeshli).
      cifar_path: a ``cifar-10-batches-py`` directory (or its parent); None uses digits.
      center: subtract the per-feature mean.

    Raises:
      ValueError: bad sizes or options (from the data and model builders).
      FileNotFoundError: ``cifar_path`` does not hold CIFAR-10.
    """
    dtype = str(jnp.result_type(float))
    return _make_problem(
        n_train, depth, width, activation, param, normalization, cifar_path, center, dtype
    )


@functools.lru_cache(maxsize=16)
def _make_problem(n_train, depth, width, activation, param, normalization, cifar_path, center,
                  dtype):  # fmt: skip
    if cifar_path is None:
        ds, name = hd.digits(n=n_train), "digits"
    else:
        ds, name = hd.cifar10(cifar_path, n=n_train), "cifar10"
    ds = hd.preprocess(ds, center=center, dtype=np.float64)
    model = models.mlp(
        ds.x.shape[1], 10, depth=depth, width=width, activation=activation, param=param
    )
    loss_fn = losses.make_loss_fn(model.apply, "mse", normalization=normalization)
    data = (jnp.asarray(ds.x, dtype), jnp.asarray(ds.y, dtype))
    desc = (
        f"{name} (first {ds.x.shape[0]}), mlp {depth}x{width} {activation} ({param}), "
        f"MSE {normalization}"
    )
    return Problem(model, loss_fn, data, desc)


def stability_threshold(optimizer: str, momentum: float = 0.0) -> float:
    """Return the critical ``eta * lambda`` of GD-type updates on a quadratic ``lambda x^2 / 2``.

    * ``"gd"``: 2.
    * ``"momentum"`` (optax heavy ball: ``v <- beta v + g``, ``theta <- theta - eta v``):
      ``2 + 2 beta``.
    * ``"nesterov"`` (optax: ``v <- beta v + g``, ``theta <- theta - eta (beta v + g)``):
      ``(2 + 2 beta) / (1 + 2 beta)``.

    Derivation (companion matrix, characteristic polynomial, Jury conditions) in
    ``docs/studies/momentum.md``.

    Raises:
      ValueError: unknown optimizer, or ``momentum`` outside [0, 1).
    """
    if optimizer not in THRESHOLD_OPTIMIZERS:
        raise ValueError(
            f"optimizer: must be one of {', '.join(THRESHOLD_OPTIMIZERS)}, got {optimizer!r}"
        )
    b = float(momentum)
    if not 0.0 <= b < 1.0:
        raise ValueError(f"momentum: must lie in [0, 1), got {momentum!r}")
    if optimizer == "gd":
        return 2.0
    if optimizer == "momentum":
        return 2.0 + 2.0 * b
    return (2.0 + 2.0 * b) / (1.0 + 2.0 * b)


def first_reach(values: np.ndarray, threshold: float, *, frac: float = 1.0) -> int:
    """Return the first step t with ``values[t] >= frac * threshold`` (NaN entries skipped), or -1.

    ``values`` is a per-step array as the trainer records it, e.g. ``metrics["sharpness"]``.
    """
    v = np.asarray(values, float)
    hit = np.flatnonzero(np.isfinite(v) & (v >= frac * threshold))
    return int(hit[0]) if hit.size else -1


def rose_before(values: np.ndarray, step: int, *, factor: float = 1.1) -> bool:
    """Return whether ``values`` rose by ``factor`` from its minimum before ``step`` to ``step``.

    True iff ``values[step] >= factor * min(values[:step])`` (finite entries only): the sharpness
    climbed to the threshold (progressive sharpening) rather than starting at it. False if
    ``step <= 0``, ``values[step]`` is NaN or nothing was measured before ``step``.
    """
    v = np.asarray(values, float)
    if step <= 0 or not np.isfinite(v[step]):
        return False
    before = v[:step][np.isfinite(v[:step])]
    return bool(before.size and v[step] >= factor * before.min())


def median_after(values: np.ndarray, step: int) -> float:
    """Median of the finite entries of ``values`` from ``step`` on (NaN if none or ``step < 0``)."""
    if step < 0:
        return float("nan")
    v = np.asarray(values, float)[step:]
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else float("nan")


def loss_oscillation(loss: np.ndarray, start: int, *, long_window: int, short_window: int = 20):
    """Return ``(long_decrease, short_nonmonotone)`` of a loss curve from step ``start`` on.

    * ``long_decrease``: split into blocks of ``long_window`` steps; the last block's mean loss is
      below the first's and at least 3/4 of successive block means decrease (the loss still
      falls over long windows, spikes allowed).
    * ``short_nonmonotone``: at least 1/4 of the windows of ``short_window`` steps contain a rise
      ``L_{t+1} > L_t`` (GD below its stability limit on a smooth loss has none).

    NaN entries (a diverged run), ``start < 0`` or fewer than two blocks make both False.
    """
    x = np.asarray(loss, float)[max(start, 0) :]
    if start < 0 or x.size < 2 * long_window or not np.all(np.isfinite(x)):
        return False, False
    nb = x.size // long_window
    means = x[: nb * long_window].reshape(nb, long_window).mean(axis=1)
    long_decrease = bool(means[-1] < means[0] and np.mean(np.diff(means) < 0) >= 0.75)
    ns = x.size // short_window
    rises = np.diff(x[: ns * short_window].reshape(ns, short_window), axis=1) > 0
    short_nonmonotone = bool(np.mean(np.any(rises, axis=1)) >= 0.25)
    return long_decrease, short_nonmonotone


def eos_stats(
    sharpness: np.ndarray,
    loss: np.ndarray,
    eta: float,
    critical: float,
    *,
    long_window: int,
    short_window: int = 20,
) -> dict[str, float | int | bool]:
    """Edge-of-stability statistics of one run.

    Args:
      sharpness: per-step sharpness (NaN off cadence), as recorded by ``callbacks.sharpness``.
      loss: per-step full-batch training loss.
      eta: the learning rate.
      critical: the critical ``eta * lambda`` (:func:`stability_threshold`), e.g. 2 for GD.
      long_window, short_window: see :func:`loss_oscillation`.

    Returns:
      ``reach_step`` (first step with ``lambda >= critical / eta``, -1 if never),
      ``rose`` (progressive sharpening before it, :func:`rose_before`),
      ``median_x_lr`` (median of ``eta * lambda`` from ``reach_step`` on),
      ``median_ratio`` (that divided by ``critical``), ``long_decrease``, ``short_nonmonotone``,
      ``sharpness0`` (first measured sharpness).
    """
    lam = np.asarray(sharpness, float)
    t = first_reach(lam, critical / eta)
    med = median_after(eta * lam, t)
    long_dec, short_nm = loss_oscillation(
        loss, t, long_window=long_window, short_window=short_window
    )
    fin = lam[np.isfinite(lam)]
    return {
        "reach_step": t,
        "rose": rose_before(lam, t),
        "median_x_lr": med,
        "median_ratio": med / critical,
        "long_decrease": long_dec,
        "short_nonmonotone": short_nm,
        "sharpness0": float(fin[0]) if fin.size else float("nan"),
    }


class Runs(NamedTuple):
    """Training curves of P full-batch runs (members of one population) or of one flow run.

    Attributes:
      loss: (P, T) training loss at theta_t (NaN after a run stopped).
      sharpness: (P, K) sharpness at the measured steps (NaN after a run stopped).
      steps: (K,) the measured steps (multiples of the cadence).
      diverged: (P,) bool. diverged_step: (P,) int, -1 where not diverged.
    """

    loss: np.ndarray
    sharpness: np.ndarray
    steps: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray


_TOOLS: dict = {}


def _tools(problem: Problem, optimizer: str, every: int, num_iters: int):
    # The same optimizer and callback objects for the same problem, so that every population and
    # flow run on it hits the trainer's compiled program (its jit cache is keyed on them).
    key = (id(problem.loss_fn), optimizer, every, num_iters)
    if key not in _TOOLS:
        opt = optim.make_optimizer(optimizer, learning_rate=1.0)
        cb = callbacks.sharpness(problem.loss_fn, every=every, num_iters=num_iters)
        _TOOLS[key] = (problem.loss_fn, opt, cb)
    return _TOOLS[key][1:]


def train_runs(
    problem: Problem,
    optimizer: str,
    learning_rates,
    *,
    momentum=None,
    num_steps: int,
    every: int,
    num_iters: int = 20,
    seed: int = 0,
    divergence_threshold: float | None = None,
    chunk_size: int = 200,
) -> Runs:
    """Full-batch training of one population (same init, one learning rate per member).

    Members run one after another through one compiled chunk of steps
    (``train_population(mode="loop")``: on CPU a vmapped population turns every matmul into a
    batched one, which XLA:CPU runs many times slower). Sharpness = top Hessian eigenvalue of the
    training loss over the whole training set, by Lanczos every ``every`` steps, warm-started.

    Args:
      problem: from :func:`make_problem`.
      optimizer: "gd", "momentum" or "nesterov" (``hessian_lab.optim.make_optimizer``).
      learning_rates: (P,) floats.
      momentum: scalar or (P,) betas (momentum optimizers only).
      num_steps, every, num_iters, seed, divergence_threshold, chunk_size: see the trainer.

    Returns:
      :class:`Runs`.
    """
    opt, cb = _tools(problem, optimizer, every, num_iters)
    lrs = np.asarray(learning_rates, float)
    hp = None if momentum is None else {"momentum": np.broadcast_to(momentum, lrs.shape)}
    res = population.train_population(
        problem.loss_fn,
        problem.model.init,
        opt,
        problem.data,
        learning_rates=lrs,
        seeds=np.full(lrs.shape, seed, dtype=int),
        num_steps=num_steps,
        hyperparams=hp,
        mode="loop",
        callbacks=[cb],
        divergence_threshold=divergence_threshold,
        chunk_size=chunk_size,
    )
    steps = np.arange(0, num_steps, every)
    return Runs(
        loss=np.asarray(res.metrics["loss"]),
        sharpness=np.asarray(res.metrics["sharpness"])[:, steps],
        steps=steps,
        diverged=np.asarray(res.diverged),
        diverged_step=np.asarray(res.diverged_step),
    )


def gradient_flow(
    problem: Problem,
    *,
    time: float,
    step: float,
    every: int,
    num_iters: int = 20,
    seed: int = 0,
    chunk_size: int = 200,
) -> Runs:
    """Integrate gradient flow ``d theta / d tau = -grad L`` up to ``tau = time`` by GD with ``step``.

    GD with a step ``h`` follows the flow to O(h) while ``h lambda << 2``; it shares the compiled
    program of a GD population with the same ``every`` and ``num_iters``. Returns a one-member
    :class:`Runs` whose steps ``k`` are at flow time ``k * step``.
    """
    num = max(round(time / step), 1)
    return train_runs(problem, "gd", [step], num_steps=num, every=every, num_iters=num_iters,
                      seed=seed, chunk_size=chunk_size)  # fmt: skip
