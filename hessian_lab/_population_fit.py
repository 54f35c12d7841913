"""How a population is trained: members in turn ("loop") or as one vmapped/sharded program.

The private half of :mod:`hessian_lab.population`, which checks the arguments and calls
:func:`train_loop` or :func:`train_batched`; both return ``(metrics, reasons, stop_step, params,
opt_state, model_state)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from . import trainer
from ._inputs import check_initial_loss
from ._sharding import fetch, place
from .optim import set_hyperparams

__all__ = ["member", "member_states", "train_batched", "train_loop"]


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, p):
    return jax.tree.map(lambda x: x[p], tree)


def member_states(state, P, stacked):
    """Each member's model state: ``state`` itself for all, or member p of a stacked one."""
    if state is None:
        return [None] * P
    return [member(state, p) if stacked else state for p in range(P)]


def train_loop(pstep, init_fn, data, keys, hp, params, opt_state, num_steps, goals, report, ms):
    """Members one after another through the single-run step; (metrics, reasons, stop, p, s, m)."""
    P, runs = len(keys), []
    for p in range(P):
        runs.append(
            trainer.train(
                pstep.step,
                init_fn(keys[p][0]) if params is None else member(params, p),
                data,
                num_steps=num_steps,
                key=keys[p][1],
                hyperparams={k: v[p] for k, v in hp.items()},
                opt_state=None if opt_state is None else member(opt_state, p),
                progress=lambda done, total, p=p: report(p * total + done),
                state=ms[p],
                **goals,
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
    return (
        metrics,
        reasons,
        stop_step,
        _stack([r.params for r in runs]),
        _stack([r.opt_state for r in runs]),
        None if ms[0] is None else _stack([r.state for r in runs]),
    )


def train_batched(pstep, init_fn, data, keys, hp, params, opt_state, num_steps, goals, report, ms):
    """All members in one vmapped (or sharded) chunk; (metrics, reasons, stop, params, state).

    In "sharded" mode the members are padded with copies of the last one up to a multiple of
    the devices on the mesh axis; the copies are dropped from every output.
    """
    P, step = len(keys), pstep.step
    if pstep.mode == "sharded":
        d = int(pstep.mesh.shape[pstep.axis])
        idx = np.minimum(np.arange(-(-P // d) * d), P - 1)
    else:
        idx = np.arange(P)
    args = trainer.run_args(step, data, num_steps=num_steps, **goals)
    # Members are initialised one by one, exactly as separate runs would be: a vmapped or
    # jitted init would compile the PRNG once more (seconds on CPU) for no gain.
    # Given stacked states are gathered in one step (with the padding copies, if any).
    select = lambda tree: jax.tree.map(lambda x: jnp.asarray(x)[idx], tree)  # noqa: E731
    params = _stack([init_fn(keys[i][0]) for i in idx]) if params is None else select(params)
    if opt_state is None:
        states = _stack([step.optimizer.init(member(params, i)) for i in range(len(idx))])
    else:
        states = select(opt_state)
    states = set_hyperparams(states, {k: v[idx] for k, v in hp.items()})
    model_states = None if ms[0] is None else _stack([ms[i] for i in idx])
    carry = jax.vmap(lambda p, s, m: trainer.init_carry(step, p, s, m))(
        params, states, model_states
    )
    data_keys = jnp.stack([keys[i][1] for i in idx])
    if pstep.mode == "sharded":
        split = NamedSharding(pstep.mesh, PS(pstep.axis))
        carry, data_keys = place((carry, data_keys), split)  # several processes too
        args = place(args, NamedSharding(pstep.mesh, PS()))
    length, chunks = min(step.chunk_size, num_steps), []
    for start in range(0, num_steps, length):
        carry, m = pstep.run(carry, args, data_keys, jnp.asarray(start, jnp.int32), length)
        m, done = fetch((m, carry.done))  # one host sync per chunk
        chunks.append(m)
        report(P * (num_steps if np.all(done) else min(start + length, num_steps)))
        if np.all(done):
            break
    if len(idx) > P:  # drop the padding members (a split axis cannot be sliced unevenly)
        chunks = [{k: v[:P] for k, v in c.items()} for c in chunks]
        rep = NamedSharding(pstep.mesh, PS())
        cut = lambda x: jax.sharding.reshard(x, rep)[:P]  # noqa: E731  (replicate, then cut)
        carry = jax.jit(lambda c: jax.tree.map(cut, c), out_shardings=rep)(carry)
    metrics = {k: np.concatenate([c[k] for c in chunks], axis=1) for k in chunks[0]}
    pad = num_steps - next(iter(metrics.values())).shape[1]
    if pad > 0:
        metrics = {
            k: np.concatenate([v, np.full((P, pad, *v.shape[2:]), np.nan)], axis=1)
            for k, v in metrics.items()
        }
    metrics = {k: v[:, :num_steps] for k, v in metrics.items()}  # the last chunk may overrun
    codes, stops = fetch((carry.reason, carry.stop_step))
    check_initial_loss(codes, stops, metrics["loss"], goals.get("divergence_threshold"))
    reasons = [trainer.STOP_REASONS[c or 1] for c in codes]
    stop_step = np.where(codes > 0, stops, -1)
    return metrics, reasons, stop_step, carry.params, carry.opt_state, carry.state
