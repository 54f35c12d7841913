"""Training problems the studies share, and the runner that trains populations on them.

* :func:`make_problem` -- the default full-batch problem: an MLP on a fixed subset of the built-in
  sklearn digits (or, given a path, the first ``n`` CIFAR-10 images, the "cifar10-5k" setting of
  Cohen et al. 2021, arXiv 2103.00065; or any data spec), one-hot targets, MSE with the
  normalisation named; or a CNN (``arch``: plain, BatchNorm, LayerNorm, a ResNet) on the images
  (:mod:`hessian_lab.studies.problems_builtin`).
* :func:`user_problem` -- the user's own model, loss and data from an entry point
  (``FILE.py:FUNCTION``, :mod:`hessian_lab.problem`) on a data spec; a study offers it through
  the Config fields ``problem``, ``data`` and ``problem_args``, checked by
  :func:`check_problem_fields`.
* :class:`SharpnessRunner` -- full-batch populations (one learning rate per member) on one
  problem with one optimizer, measuring the full-data sharpness by Lanczos every few steps. It
  holds its compiled step: every population and gradient-flow run it trains reuses one program.
* :func:`catapult_problem` and :class:`CatapultRunner` -- the catapult nets (the linear UV net on
  one example, MLPs and CNNs on standardised digits) and populations over a grid of
  ``c = eta * lambda0`` and seeds, each member at ``eta = c / lambda0(seed)`` (Lewkowycz et al.
  2020, arXiv 2003.02218; Kalra & Barkeshli 2023, arXiv 2302.12250).

Nothing here caches: a study builds its problem and runners once per run and passes them on.

Example:
  >>> from hessian_lab.studies import problems
  >>> p = problems.make_problem(n_train=64, depth=1, width=8)
  >>> p.data[0].shape, p.data[1].shape
  ((64, 64), (64, 10))
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hessian_lab import callbacks, full_data_hvp, losses, models, optim, population, top_eigs
from hessian_lab import data as hd
from hessian_lab import tree as tu
from hessian_lab.problem import Problem

from .problems_builtin import ARCH_DOC as ARCH_DOC
from .problems_builtin import ARCHS as ARCHS
from .problems_builtin import make_problem as make_problem
from .problems_builtin import pool_images as pool_images
from .problems_user import ARGS_DOC as ARGS_DOC
from .problems_user import DATA_DOC as DATA_DOC
from .problems_user import MLP_FIELDS as MLP_FIELDS
from .problems_user import PROBLEM_DOC as PROBLEM_DOC
from .problems_user import check_problem_fields as check_problem_fields
from .problems_user import checked_model as checked_model
from .problems_user import user_problem as user_problem
from .problems_user import user_problem_of as user_problem_of

__all__ = ["ARCHS", "ARCH_DOC", "Problem", "Runs", "SharpnessRunner", "flow_steps"]
__all__ += ["make_problem", "pool_images"]
__all__ += ["CatapultRunner", "CatapultRuns", "catapult_problem", "line_barrier"]
__all__ += ["ARGS_DOC", "DATA_DOC", "MLP_FIELDS", "PROBLEM_DOC", "check_problem_fields"]
__all__ += ["checked_model", "user_problem", "user_problem_of"]


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


class SharpnessRunner:
    """Full-batch training populations of one problem and optimizer, with the sharpness measured.

    Members run one after another through one compiled chunk of steps (population mode
    ``"loop"``: on CPU a vmapped population turns every matmul into a batched one, which XLA:CPU
    runs many times slower). Sharpness = top Hessian eigenvalue of the training loss over the
    whole training set, by Lanczos every ``every`` steps, warm-started.

    A stateful problem (BatchNorm: ``problem.loss_fn`` a :class:`~hessian_lab.StatefulLoss`)
    trains from ``problem.state`` and carries each member's running statistics; its sharpness
    is that of the loss in the StatefulLoss's mode (train: the full training set's batch
    statistics, the loss GD descends), over the training set as one chunk.

    Args:
      problem: from :func:`make_problem` (or a user's problem, stateful or not).
      optimizer: "gd", "momentum" or "nesterov" (``hessian_lab.optim.make_optimizer``).
      every, num_iters: the sharpness cadence and Lanczos iterations.
      chunk_size: steps per compiled chunk.
    """

    def __init__(
        self,
        problem: Problem,
        optimizer: str,
        *,
        every: int,
        num_iters: int = 20,
        chunk_size: int = 200,
    ):
        self.problem, self.every = problem, every
        opt = optim.make_optimizer(optimizer, learning_rate=1.0)
        sharp = callbacks.sharpness(problem.loss_fn, every=every, num_iters=num_iters)
        self.step = population.make_step(
            problem.loss_fn, opt, mode="loop", callbacks=[sharp], chunk_size=chunk_size
        )

    def train(
        self,
        learning_rates,
        *,
        num_steps: int,
        momentum=None,
        seed: int = 0,
        divergence_threshold: float | None = None,
        progress=None,
    ) -> Runs:
        """Train one member per learning rate from the same initialisation (``seed``).

        ``momentum``: a scalar or (P,) betas (momentum optimizers only). ``progress(done, total)``
        counts member-steps.
        """
        lrs = np.asarray(learning_rates, float)
        hp = None if momentum is None else {"momentum": np.broadcast_to(momentum, lrs.shape)}
        res = population.train_population(
            self.step,
            self.problem.model.init,
            self.problem.data,
            learning_rates=lrs,
            seeds=np.full(lrs.shape, seed, dtype=int),
            num_steps=num_steps,
            hyperparams=hp,
            divergence_threshold=divergence_threshold,
            progress=progress,
            state=self.problem.state,
        )
        steps = np.arange(0, num_steps, self.every)
        return Runs(
            loss=np.asarray(res.metrics["loss"]),
            sharpness=np.asarray(res.metrics["sharpness"])[:, steps],
            steps=steps,
            diverged=np.asarray(res.diverged),
            diverged_step=np.asarray(res.diverged_step),
        )

    def flow(self, *, time: float, step: float, seed: int = 0, progress=None) -> Runs:
        """Gradient flow ``d theta / d tau = -grad L`` up to ``tau = time``, by GD with ``step``.

        GD with a step ``h`` follows the flow to O(h) while ``h lambda << 2`` (a "gd" runner).
        Returns a one-member :class:`Runs` whose steps ``k`` are at flow time ``k * step``.
        """
        return self.train([step], num_steps=flow_steps(time, step), seed=seed, progress=progress)


def flow_steps(time: float, step: float) -> int:
    """GD steps that integrate gradient flow up to ``time`` with ``step`` (at least one)."""
    return max(round(time / step), 1)


def catapult_problem(
    arch: str,
    *,
    width: int,
    depth: int = 1,
    n: int = 64,
    param: str = "ntk",
    activation: str = "relu",
    normalization: str = "per_example",
) -> Problem:
    """A catapult net: the linear UV net on one example, or an MLP/CNN on standardised digits.

    ``arch="uv"``: ``f = v . u x / sqrt(width)`` (``models.uv``, NTP) on one example ``x = 1``
    with target ``y = 0``, loss ``f^2 / 2`` (``depth``, ``n``, ``param``, ``activation`` unused).
    ``"mlp"``/``"cnn"``: ``models.mlp``/``models.cnn`` (8x8x1 images) on the first ``n`` sklearn
    digits, inputs standardised per feature, one-hot targets, MSE with ``normalization``.
    """
    dtype = jnp.result_type(float)
    if arch == "uv":
        model = models.uv(1, width, param="ntp")
        x, y = jnp.ones((1, 1), dtype), jnp.zeros((1, 1), dtype)
        desc = f"uv width {width} (NTP), one example x = 1, y = 0, loss f^2/2"
    elif arch in ("mlp", "cnn"):
        ds = hd.digits(n=n, flatten=arch == "mlp", standardize="feature", dtype=np.float64)
        kw = dict(depth=depth, width=width, activation=activation, param=param)
        model = models.mlp(64, 10, **kw) if arch == "mlp" else models.cnn((8, 8, 1), 10, **kw)
        x, y = jnp.asarray(ds.x, dtype), jnp.asarray(ds.y, dtype)
        desc = (
            f"digits (first {n}), {arch} {depth}x{width} {activation} ({param}), "
            f"MSE {normalization}"
        )
    else:
        raise ValueError(f"arch: must be 'uv', 'mlp' or 'cnn', got {arch!r}")
    loss_fn = losses.make_loss_fn(model.apply, "mse", normalization=normalization)
    return Problem(model, loss_fn, (x, y), desc)


def line_barrier(loss_fn, num_points: int, every: int) -> callbacks.Callback:
    """Callback: ``line_ratio`` = max over s in (0, 1] of L(theta_0 + s (theta_t - theta_0)) / L_0.

    The state is theta_0 (the params the callback first sees), so with ``every = T`` step T
    carries the barrier of the segment theta_0 -> theta_T, sampled at ``num_points`` values of s.
    """
    s = jnp.linspace(0.0, 1.0, num_points + 1)[1:]

    def update(theta0, info):
        def at(si):
            theta = jax.tree.map(lambda a, b: a + si * (b - a), theta0, info.params)
            return loss_fn(theta, info.data)

        return theta0, {"line_ratio": jnp.max(jax.lax.map(at, s)) / loss_fn(theta0, info.data)}

    return callbacks.Callback(lambda params: params, update, every)


class CatapultRuns(NamedTuple):
    """A population over (c, seed): arrays shaped (C, S, ...), T + 1 recorded steps.

    Attributes:
      lambda0: (S,) sharpness at each seed's initialisation. eta: (C, S) = c / lambda0.
      loss, sharpness: (C, S, T + 1) at theta_0 .. theta_T (NaN after divergence; the
        sharpness also off its cadence).
      line_ratio: (C, S) the line barrier at step T (NaN if not measured).
      diverged: (C, S) bool. diverged_step: (C, S) int, -1 where not diverged.
    """

    lambda0: np.ndarray
    eta: np.ndarray
    loss: np.ndarray
    sharpness: np.ndarray
    line_ratio: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray


class CatapultRunner:
    """Full-batch GD populations at ``eta = c / lambda0(seed)`` on one problem, compiled once.

    ``lambda0(seed)`` is the sharpness (top Hessian eigenvalue of the full training loss, Lanczos
    from a fixed random start) at that seed's initialisation, on the data the run trains on. The
    runner holds its compiled programs (the ``lambda0`` one and the population step, sharpness
    every ``sharpness_every`` steps and, with ``barrier_points``, the line barrier at step T):
    new grids of ``c`` and new seeds of the same counts reuse them.

    Args:
      problem: e.g. from :func:`catapult_problem`.
      num_steps: T; metrics are recorded at steps 0..T (T + 1 loss evaluations).
      sharpness_every, lanczos_iters: cadence and Lanczos iterations of the sharpness callback.
      lambda0_iters: Lanczos iterations of ``lambda0``.
      barrier_points: points of the segment theta_0 -> theta_T (0: no barrier).
      mode: the population mode (``population.make_step``).
    """

    def __init__(
        self,
        problem: Problem,
        *,
        num_steps: int,
        sharpness_every: int = 1,
        lanczos_iters: int = 10,
        lambda0_iters: int = 30,
        barrier_points: int = 0,
        mode: str = "auto",
    ):
        self.problem, self.num_steps, self.barrier = problem, num_steps, barrier_points > 0
        loss_fn = problem.loss_fn
        cbs = [callbacks.sharpness(loss_fn, every=sharpness_every, num_iters=lanczos_iters)]
        if self.barrier:
            cbs.append(line_barrier(loss_fn, barrier_points, num_steps))
        gd = optim.make_optimizer("gd", learning_rate=1.0)
        self.step = population.make_step(
            loss_fn, gd, mode=mode, callbacks=cbs, chunk_size=num_steps + 1
        )

        def lambda0(params, data):
            mv = full_data_hvp(loss_fn, params, data, chunk_size=jax.tree.leaves(data)[0].shape[0])
            v0 = tu.normalize(tu.random_like(jax.random.key(7), params))
            return top_eigs(mv, v0, k=1, num_iters=lambda0_iters).values[0]

        self._lambda0 = jax.jit(jax.vmap(lambda0, in_axes=(0, None)))

    def work(self, num_c: int, num_seeds: int) -> int:
        """Member-steps :meth:`train` runs for that grid: the total its ``progress`` reports."""
        return num_c * num_seeds * (self.num_steps + 1)

    def lambda0(self, seeds) -> np.ndarray:
        """Sharpness at initialisation of every seed, (S,) (the init ``train`` uses)."""
        init = self.problem.model.init
        members = [init(population.member_keys(int(s))[0]) for s in seeds]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)
        return np.asarray(self._lambda0(stacked, self.problem.data))

    def train(self, cs, seeds, *, divergence_threshold: float, progress=None) -> CatapultRuns:
        """Train member (c, seed) at ``c / lambda0(seed)`` for T + 1 steps; arrays (C, S, ...)."""
        cs, seeds = np.asarray(cs, float), np.asarray(seeds, int)
        C, S, T = cs.size, seeds.size, self.num_steps
        lam0 = self.lambda0(seeds)
        eta = cs[:, None] / lam0[None, :]
        bad = ~np.isfinite(eta) | (eta <= 0)
        res = population.train_population(
            self.step,
            self.problem.model.init,
            self.problem.data,
            learning_rates=np.where(bad, 1.0, eta).ravel(),
            seeds=np.tile(seeds, C),
            num_steps=T + 1,
            divergence_threshold=divergence_threshold,
            progress=progress,
        )
        m = {k: np.asarray(v).reshape(C, S, T + 1) for k, v in res.metrics.items()}
        line = m["line_ratio"][..., T] if self.barrier else np.full((C, S), np.nan)
        return CatapultRuns(
            lam0,
            eta,
            m["loss"],
            m["sharpness"],
            line,
            np.asarray(res.diverged).reshape(C, S),
            np.asarray(res.diverged_step).reshape(C, S),
        )
