"""Populations: runs that share shapes (learning rates x seeds), trained as one program.

Member p has its own learning rate ``learning_rates[p]`` (and optionally other injected
hyperparameters) and seed ``seeds[p]``, from which :func:`member_keys` derives its init key
(for ``init_fn``) and its data-shuffling key. :func:`make_step` builds the compiled program once,
in one of three modes; :func:`train_population` runs it and can be called again with new
learning rates, seeds or data of the same shapes without recompiling:

* ``"loop"``: members one after another through the same compiled single-run chunk
  (:func:`hessian_lab.trainer.make_step`; on CPU vmap gives little speedup);
* ``"vmap"``: all members as one vmapped chunk of steps;
* ``"sharded"``: the vmapped program with the member axis split over the devices of a mesh
  (``jax.shard_map``), so each device trains its share of the members (docs/scaling.md).

Each member stops on its own (divergence, goals, ``num_steps``, see :mod:`hessian_lab.trainer`):
a stopped member is frozen, its metrics are NaN from then on, and since members share no
arithmetic, a diverged member's NaNs never reach the others. The step counter is shared (not
batched), so callback cadences stay real ``lax.cond`` s under vmap.

Example (``loss_fn``, ``model`` and ``data`` are yours):
    >>> pstep = make_step(loss_fn, make_optimizer("gd", learning_rate=0.1),
    ...                   callbacks=[sharpness(loss_fn, every=10)])  # doctest: +SKIP
    >>> res = train_population(pstep, model.init, data, learning_rates=jnp.geomspace(0.01, 1, 8),
    ...                        seeds=jnp.zeros(8, int), num_steps=100)  # doctest: +SKIP
    >>> res.metrics["loss"].shape, res.metrics["sharpness"].shape, res.diverged_step  # doctest: +SKIP
    ((8, 100), (8, 100), array([-1, ..., 17]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as PS

from . import progress as progress_lib
from . import trainer
from ._inputs import (
    check_finite,
    check_hyperparams,
    check_members,
    check_opt_state,
    check_params,
)
from ._population_fit import member, member_states, train_batched, train_loop

__all__ = ["PopulationResult", "PopulationStep", "make_step", "member_keys", "train_population"]


class PopulationResult(NamedTuple):
    """Per-member results; every array has leading axis P (members).

    Attributes:
      metrics: name -> (P, T) numpy arrays (T = ``num_steps``; NaN after a member stopped).
      diverged: (P,) bool. diverged_step: (P,) int, -1 where not diverged.
      stop_reason: (P,) str array ("num_steps", "diverged", "loss_goal", "accuracy_goal").
      stop_step: (P,) int, -1 where the member ran all steps.
      params, opt_state: final states, leaves with leading axis P.
      learning_rates, seeds: the inputs, as numpy arrays.
      state: final model states (leading axis P) of a stateful loss, else None.
    """

    metrics: dict[str, np.ndarray]
    diverged: np.ndarray
    diverged_step: np.ndarray
    stop_reason: np.ndarray
    stop_step: np.ndarray
    params: Any
    opt_state: Any
    learning_rates: np.ndarray
    seeds: np.ndarray
    state: Any = None


class PopulationStep(NamedTuple):
    """A population's compiled program, made by :func:`make_step`; reuse it to reuse code.

    Attributes:
      step: the single-member :class:`hessian_lab.trainer.Step` (run in turn in "loop" mode,
        scanned per member by the vmapped program otherwise).
      run: ``run(carry, args, keys, start, length)``: the jitted chunk over all members (leading
        member axis on ``carry`` and ``keys``); None in "loop" mode.
      mode: "loop", "vmap" or "sharded" ("auto" resolved when the step was made).
      mesh, axis: the mesh and axis the members are split over ("sharded" only, else None).
    """

    step: trainer.Step
    run: Callable | None
    mode: str
    mesh: Mesh | None
    axis: Any


def member_keys(seed):
    """Return ``(init_key, data_key)`` of a member with this integer seed."""
    k = jax.random.split(jax.random.key(seed))
    return k[0], k[1]


def _member_mesh(mesh, axis):
    """Validate (or build) the mesh the members are split over."""
    if mesh is None:
        if axis != "members":
            raise ValueError(f"axis: without a mesh it must be 'members', got {axis!r}")
        mesh = jax.make_mesh((jax.device_count(),), ("members",))
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: must be a jax.sharding.Mesh or None, got {type(mesh)}")
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: must be one of the mesh axes {mesh.axis_names}, got {axis!r}")
    return mesh


def make_step(
    loss_fn,
    optimizer,
    *,
    mode: Literal["auto", "vmap", "loop", "sharded"] = "auto",
    mesh: Mesh | None = None,
    axis: Any = "members",
    callbacks=(),
    accuracy_fn=None,
    batch_size: int | None = None,
    chunk_size: int = 100,
) -> PopulationStep:
    """Build the compiled program that :func:`train_population` runs.

    Args:
      loss_fn, optimizer, callbacks, accuracy_fn, batch_size, chunk_size: as in
        :func:`hessian_lab.trainer.make_step`. The optimizer should have injected
        hyperparameters (``make_optimizer``): each member's ``learning_rate`` is set in its state.
      mode: "vmap" (one vmapped program), "loop" (members in turn, one compiled chunk), or
        "auto" (default): "loop" on CPU, where XLA runs the batched matmuls of a vmapped
        population far slower (measured 40x on the edge-of-stability study), "vmap" on GPU/TPU;
        or "sharded": the vmapped program with the member axis split over ``mesh[axis]``, each
        device training ``ceil(P / d)`` members (``d`` devices). When ``d`` does not divide
        ``P``, the population is padded with copies of the last member up to a multiple of
        ``d``; the copies are trained (wasted work, at most ``d - 1`` members) and dropped from
        every output, so results always have ``P`` members and equal the "vmap" ones.
      mesh: only for "sharded": a ``jax.sharding.Mesh`` (default: all devices on one axis
        named "members"). Other mesh axes than ``axis`` hold replicated copies.
      axis: only for "sharded": the mesh axis the members are split over (default "members").

    Returns:
      :class:`PopulationStep`; nothing compiles until the first :func:`train_population`.

    Raises:
      ValueError: unknown ``mode``, ``mesh``/``axis`` given without ``mode="sharded"``, a
        ``mesh`` that is not a Mesh or lacks ``axis``, plus everything
        :func:`hessian_lab.trainer.make_step` rejects.
    """
    if mode not in ("auto", "vmap", "loop", "sharded"):
        raise ValueError(f"mode: must be 'auto', 'vmap', 'loop' or 'sharded', got {mode!r}")
    if mode != "sharded" and (mesh is not None or axis != "members"):
        raise ValueError(f"mesh, axis: only used with mode='sharded', got mode={mode!r}")
    if mode == "auto":
        mode = "loop" if jax.default_backend() == "cpu" else "vmap"
    step = trainer.make_step(
        loss_fn,
        optimizer,
        callbacks=callbacks,
        accuracy_fn=accuracy_fn,
        batch_size=batch_size,
        chunk_size=chunk_size,
    )
    if mode == "loop":
        return PopulationStep(step, None, mode, None, None)

    def vmapped(carry, args, keys, start, length):
        return jax.vmap(lambda c, k: step.scan(c, args, k, start, length))(carry, keys)

    if mode == "vmap":
        return PopulationStep(step, jax.jit(vmapped, static_argnames="length"), mode, None, None)
    mesh = _member_mesh(mesh, axis)

    def sharded(carry, args, keys, start, length):
        # Each device vmaps over its own block of members; members share no arithmetic, so no
        # collective is needed. check_vma=False: a stopped member's NaN metrics (lax.cond's skip
        # branch) start replicated while the run branch's are per-device.
        return jax.shard_map(
            lambda c, a, k, t: vmapped(c, a, k, t, length),
            mesh=mesh,
            in_specs=(PS(axis), PS(), PS(axis), PS()),
            out_specs=(PS(axis), PS(axis)),
            check_vma=False,
        )(carry, args, keys, start)

    return PopulationStep(step, jax.jit(sharded, static_argnames="length"), mode, mesh, axis)


def train_population(
    pstep: PopulationStep,
    init_fn,
    data,
    *,
    learning_rates,
    seeds,
    num_steps: int,
    hyperparams: dict[str, Any] | None = None,
    loss_goal: float | None = None,
    accuracy_goal: float | None = None,
    divergence_threshold: float | None = None,
    params=None,
    opt_state=None,
    progress=None,
    state=None,
) -> PopulationResult:
    """Train P members that differ in learning rate, seed and injected hyperparameters.

    Args:
      pstep: from :func:`make_step`; reuse it across calls to reuse the compiled program.
      init_fn: ``init_fn(key) -> params``; member p uses ``member_keys(seeds[p])[0]``.
      data: pytree of arrays with a common leading axis n, shared by all members.
      learning_rates: (P,) floats > 0, set as each member's injected ``learning_rate`` (the
        peak/target of a schedule). seeds: (P,) ints.
      num_steps: updates per member.
      hyperparams: name -> scalar or (P,) array of other injected hyperparameters.
      loss_goal, accuracy_goal, divergence_threshold: as in :func:`hessian_lab.trainer.train`.
      params: initial params of every member, stacked (leading axis P), e.g. a previous
        :class:`PopulationResult`'s ``params`` to continue training; ``init_fn`` is then not
        called (pass None). Default: ``init_fn`` of each member's key.
      opt_state: initial optimizer states, stacked (leading axis P), e.g. a previous result's
        ``opt_state`` (its step counts and moments carry on); default ``optimizer.init`` of
        each member's params. Injected hyperparameters are set from ``learning_rates`` and
        ``hyperparams`` either way. The step index restarts at 0 (callback cadences, SGD epochs).
      progress: None, a host callable ``progress(done, total)`` called after every chunk, or
        True for a progress bar. Units: member-steps in every mode (``total = P * num_steps``;
        a vmapped chunk of ``k`` steps advances ``done`` by ``P * k``), so a caller's total does
        not depend on the mode.
      state: the initial model state of a stateful loss (:class:`~hessian_lab.StatefulLoss`),
        required exactly then: one state for every member (BatchNorm's initial statistics do
        not depend on the seed), or, when ``params`` is given, stacked like it (e.g. a
        previous result's ``state``).

    Returns:
      :class:`PopulationResult`.

    Raises:
      ValueError: before any work, ``learning_rates`` / ``seeds`` not 1-D of equal length, a
        learning rate not finite and > 0, seeds outside ``[0, 2**32)``, ``params`` /
        ``opt_state`` whose leaves lack the leading member axis P or hold NaN, neither
        ``init_fn`` nor ``params``, plus everything :func:`hessian_lab.trainer.train` rejects
        (empty or non-finite data, ``num_steps``, ``hyperparams``, goals); after the first
        chunk, members whose loss is non-finite at their initial params (bad input, not
        divergence; a diverged member never raises).
    """
    if not isinstance(pstep, PopulationStep):
        raise ValueError(
            f"pstep: expected a population.make_step result, got {type(pstep).__name__}"
        )
    lrs, seeds = check_members(learning_rates, seeds)
    P = lrs.size
    for name, tree in (("params", params), ("opt_state", opt_state)):
        bad = [jnp.shape(x) for x in jax.tree.leaves(tree) if jnp.shape(x)[:1] != (P,)]
        if bad:
            raise ValueError(
                f"{name}: every leaf must have the leading member axis of length P={P} "
                f"(stacked members), got shapes {bad[:3]}"
            )
    if params is None and not callable(init_fn):
        raise ValueError("init_fn: must be callable when params is not given")
    if params is not None:
        check_params(params)
    if opt_state is not None:  # one member's state against optimizer.init of its params
        p0 = member(params, 0) if params is not None else init_fn(member_keys(int(seeds[0]))[0])
        check_opt_state(pstep.step.optimizer, p0, member(opt_state, 0))
        check_finite("opt_state", opt_state, allow_inf=True)
    goals = dict(
        loss_goal=loss_goal, accuracy_goal=accuracy_goal, divergence_threshold=divergence_threshold
    )
    trainer.run_args(pstep.step, data, num_steps=num_steps, **goals)  # fail before any work
    hp = check_hyperparams(hyperparams, members=P) | {"learning_rate": lrs}
    keys = [member_keys(int(s)) for s in seeds]
    trainer.check_state(pstep.step, state)
    if state is not None and params is not None:
        bad = [jnp.shape(x) for x in jax.tree.leaves(state) if jnp.shape(x)[:1] != (P,)]
        if bad:
            raise ValueError(
                f"state: with params given, must be stacked like them (leading axis P={P}), got "
                f"shapes {bad[:3]}"
            )
    ms = member_states(state, P, stacked=params is not None)
    fit = train_loop if pstep.mode == "loop" else train_batched
    with progress_lib.reporter(progress, P * num_steps) as report:
        metrics, reasons, stop_step, params, opt_state, model_state = fit(
            pstep, init_fn, data, keys, hp, params, opt_state, num_steps, goals, report, ms
        )
    reasons = np.array(reasons)
    diverged = reasons == "diverged"
    return PopulationResult(
        metrics,
        diverged,
        np.where(diverged, stop_step, -1),
        reasons,
        stop_step,
        params,
        opt_state,
        lrs,
        seeds,
        model_state,
    )
