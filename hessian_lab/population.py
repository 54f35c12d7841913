"""Populations: runs that share shapes (learning rates x seeds), trained as one program.

Member p has its own learning rate ``learning_rates[p]`` (and optionally other injected
hyperparameters) and seed ``seeds[p]``, from which :func:`member_keys` derives its init key
(for ``init_fn``) and its data-shuffling key. ``mode="vmap"`` trains all members as one vmapped
chunk of steps; ``mode="loop"`` trains them one after another through the same compiled
single-run chunk (on CPU vmap gives little speedup); ``mode="sharded"`` splits the member axis
of the vmapped program over the devices of a mesh (``jax.shard_map``), so each device trains its
share of the members (docs/scaling.md). All three compile once.

Each member stops on its own (divergence, goals, ``num_steps``, see :mod:`hessian_lab.trainer`):
a stopped member is frozen, its metrics are NaN from then on, and since members share no
arithmetic, a diverged member's NaNs never reach the others. The step counter is shared (not
batched), so callback cadences stay real ``lax.cond`` s under vmap.

Example:
    >>> res = train_population(loss_fn, model.init, make_optimizer("gd", learning_rate=0.1),
    ...                        data, learning_rates=jnp.geomspace(0.01, 1.0, 8),
    ...                        seeds=jnp.zeros(8, int), num_steps=100,
    ...                        callbacks=[sharpness(loss_fn, every=10)])
    >>> res.metrics["loss"].shape, res.metrics["sharpness"].shape, res.diverged_step
    ((8, 100), (8, 100), array([-1, ..., 17]))
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as PS

from . import trainer as _tr
from .optim import set_hyperparams

__all__ = ["PopulationResult", "member_keys", "train_population"]


class PopulationResult(NamedTuple):
    """Per-member results; every array has leading axis P (members).

    Attributes:
      metrics: name -> (P, T) numpy arrays (T = ``num_steps``; NaN after a member stopped).
      diverged: (P,) bool. diverged_step: (P,) int, -1 where not diverged.
      stop_reason: (P,) str array ("num_steps", "diverged", "loss_goal", "accuracy_goal").
      stop_step: (P,) int, -1 where the member ran all steps.
      params, opt_state: final states, leaves with leading axis P.
      learning_rates, seeds: the inputs, as numpy arrays.
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


def member_keys(seed):
    """Return ``(init_key, data_key)`` of a member with this integer seed."""
    k = jax.random.split(jax.random.key(seed))
    return k[0], k[1]


def _chunk_vmap(static, carry, shared, keys, start):
    return jax.vmap(lambda c, k: _tr._chunk(static, c, shared, k, start))(carry, keys)


_run_chunk_vmap = jax.jit(_chunk_vmap, static_argnums=0)


def _chunk_sharded(static, mesh, axis, carry, shared, keys, start):
    # Each device vmaps over its own block of members; members share no arithmetic, so no
    # collective is needed. check_vma=False: a stopped member's NaN metrics (lax.cond's skip
    # branch) start replicated while the run branch's are per-device.
    local = lambda c, s, k, t: _chunk_vmap(static, c, s, k, t)  # noqa: E731
    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(PS(axis), PS(), PS(axis), PS()),
        out_specs=(PS(axis), PS(axis)),
        check_vma=False,
    )(carry, shared, keys, start)


_run_chunk_sharded = jax.jit(_chunk_sharded, static_argnums=(0, 1, 2))


def _member_mesh(mesh, axis):
    """Validate (or build) the mesh the members are split over; return (mesh, devices on axis)."""
    if mesh is None:
        if axis != "members":
            raise ValueError(f"axis: without a mesh it must be 'members', got {axis!r}")
        mesh = jax.make_mesh((jax.device_count(),), ("members",))
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: must be a jax.sharding.Mesh or None, got {type(mesh)}")
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: must be one of the mesh axes {mesh.axis_names}, got {axis!r}")
    return mesh, int(mesh.shape[axis])


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def train_population(
    loss_fn,
    init_fn,
    optimizer,
    data,
    *,
    learning_rates,
    seeds,
    num_steps: int,
    hyperparams: dict[str, Any] | None = None,
    mode: Literal["auto", "vmap", "loop", "sharded"] = "auto",
    mesh: Mesh | None = None,
    axis: Any = "members",
    batch_size: int | None = None,
    callbacks=(),
    accuracy_fn=None,
    loss_goal: float | None = None,
    accuracy_goal: float | None = None,
    divergence_threshold: float | None = None,
    chunk_size: int = 100,
    params=None,
    opt_state=None,
) -> PopulationResult:
    """Train P members that differ in learning rate, seed and injected hyperparameters.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      init_fn: ``init_fn(key) -> params``; member p uses ``member_keys(seeds[p])[0]``.
      optimizer: an optax optimizer with injected hyperparameters (``make_optimizer``);
        ``learning_rates`` sets its ``learning_rate`` (the peak/target of a schedule).
      data: pytree of arrays with a common leading axis n, shared by all members.
      learning_rates: (P,) floats > 0. seeds: (P,) ints.
      num_steps: updates per member.
      hyperparams: name -> scalar or (P,) array of other injected hyperparameters.
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
      batch_size, callbacks, accuracy_fn, loss_goal, accuracy_goal, divergence_threshold,
        chunk_size: as in :func:`hessian_lab.trainer.train`.
      params: initial params of every member, stacked (leading axis P), e.g. a previous
        :class:`PopulationResult`'s ``params`` to continue training; ``init_fn`` is then not
        called (pass None). Default: ``init_fn`` of each member's key.
      opt_state: initial optimizer states, stacked (leading axis P), e.g. a previous result's
        ``opt_state`` (its step counts and moments carry on); default ``optimizer.init`` of
        each member's params. Injected hyperparameters are set from ``learning_rates`` and
        ``hyperparams`` either way. The step index restarts at 0 (callback cadences, SGD epochs).

    Returns:
      :class:`PopulationResult`.

    Raises:
      ValueError: ``learning_rates`` / ``seeds`` not 1-D of equal length, a learning rate <= 0,
        ``params`` / ``opt_state`` whose leaves lack the leading member axis P, neither
        ``init_fn`` nor ``params``, unknown ``mode``, ``mesh``/``axis`` given without
        ``mode="sharded"``, a ``mesh`` that is not a Mesh or lacks ``axis``, plus everything
        :func:`hessian_lab.trainer.train` rejects.
    """
    lrs, seeds = np.asarray(learning_rates, float), np.asarray(seeds)
    if lrs.ndim != 1 or lrs.size == 0:
        raise ValueError(f"learning_rates: must be a non-empty 1-D array, got shape {lrs.shape}")
    if seeds.shape != lrs.shape or not np.issubdtype(seeds.dtype, np.integer):
        raise ValueError(
            f"seeds: must be 1-D ints of the learning_rates' shape {lrs.shape}, got {seeds.shape} {seeds.dtype}"
        )
    if not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError(f"learning_rates: must all be finite and > 0, got {lrs}")
    if mode not in ("auto", "vmap", "loop", "sharded"):
        raise ValueError(f"mode: must be 'auto', 'vmap', 'loop' or 'sharded', got {mode!r}")
    if mode != "sharded" and (mesh is not None or axis != "members"):
        raise ValueError(f"mesh, axis: only used with mode='sharded', got mode={mode!r}")
    if mode == "auto":
        mode = "loop" if jax.default_backend() == "cpu" else "vmap"
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
    if mode == "sharded":
        mesh, d = _member_mesh(mesh, axis)
        # Pad with copies of the last member (trained, then dropped) to a multiple of d.
        pad_to = -(-P // d) * d
        idx = np.minimum(np.arange(pad_to), P - 1)
    else:
        idx = np.arange(P)
    hp = {k: np.broadcast_to(np.asarray(v), (P,)) for k, v in (hyperparams or {}).items()}
    hp["learning_rate"] = lrs
    hp = {k: v[idx] for k, v in hp.items()}
    kw = dict(
        batch_size=batch_size,
        callbacks=callbacks,
        accuracy_fn=accuracy_fn,
        loss_goal=loss_goal,
        accuracy_goal=accuracy_goal,
        divergence_threshold=divergence_threshold,
        chunk_size=chunk_size,
    )
    keys = [member_keys(int(seeds[p])) for p in idx]

    def member(tree, p):
        return jax.tree.map(lambda x: x[p], tree)

    if mode == "loop":
        runs = []
        for p in range(P):
            runs.append(
                _tr.train(
                    loss_fn,
                    init_fn(keys[p][0]) if params is None else member(params, p),
                    optimizer,
                    data,
                    num_steps=num_steps,
                    key=keys[p][1],
                    hyperparams={k: v[p] for k, v in hp.items()},
                    opt_state=None if opt_state is None else member(opt_state, p),
                    **kw,
                )
            )
        metrics = {}
        for k in runs[0].history.metrics:
            m = np.full((P, num_steps, *runs[0].history[k].shape[1:]), np.nan)
            for p, r in enumerate(runs):
                m[p, : len(r.history[k])] = r.history[k]
            metrics[k] = m
        reasons = [r.history.stop_reason for r in runs]
        stop_step = np.array([r.history.stop_step for r in runs])
        params = _stack([r.params for r in runs])
        opt_state = _stack([r.opt_state for r in runs])
    else:
        static, shared = _tr._prepare(loss_fn, optimizer, data, num_steps=num_steps, **kw)

        # Members are initialised one by one, exactly as separate runs would be: a vmapped or
        # jitted init would compile the PRNG once more (seconds on CPU) for no gain.
        # Given stacked states are gathered in one step (with the padding copies, if any).
        def select(tree):
            return jax.tree.map(lambda x: jnp.asarray(x)[idx], tree)

        params = _stack([init_fn(k[0]) for k in keys]) if params is None else select(params)
        if opt_state is None:
            states = _stack([optimizer.init(member(params, i)) for i in range(len(idx))])
        else:
            states = select(opt_state)
        states = set_hyperparams(states, hp)
        carry = jax.vmap(lambda p, s: _tr._init_carry(static, p, s))(params, states)
        data_keys = jnp.stack([k[1] for k in keys])
        if mode == "sharded":
            split = NamedSharding(mesh, PS(axis))
            carry, data_keys = jax.device_put((carry, data_keys), split)
            shared = jax.device_put(shared, NamedSharding(mesh, PS()))
            run_chunk = lambda *a: _run_chunk_sharded(static, mesh, axis, *a)  # noqa: E731
        else:
            run_chunk = lambda *a: _run_chunk_vmap(static, *a)  # noqa: E731
        chunks = []
        for start in range(0, num_steps, static.chunk):
            carry, m = run_chunk(carry, shared, data_keys, jnp.asarray(start, jnp.int32))
            m, done = jax.device_get((m, carry.done))  # one host sync per chunk
            chunks.append(m)
            if np.all(done):
                break
        if len(idx) > P:  # drop the padding members (a split axis cannot be sliced unevenly)
            chunks = [{k: v[:P] for k, v in c.items()} for c in chunks]
            carry = jax.device_put(carry, NamedSharding(mesh, PS()))
            carry = jax.tree.map(lambda x: x[:P], carry)
        metrics = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
        pad = num_steps - next(iter(metrics.values())).shape[1]
        if pad > 0:
            metrics = {
                k: np.concatenate([v, np.full((P, pad, *v.shape[2:]), np.nan)], axis=1)
                for k, v in metrics.items()
            }
        metrics = {k: v[:, :num_steps] for k, v in metrics.items()}
        codes = np.asarray(carry.reason)
        reasons = [_tr.STOP_REASONS[c or 1] for c in codes]
        stop_step = np.where(codes > 0, np.asarray(carry.stop_step), -1)
        params, opt_state = carry.params, carry.opt_state
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
    )
