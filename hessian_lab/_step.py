"""The training step the trainer scans: loss, gradient, callbacks, update, stopping rules.

Kept apart from :mod:`hessian_lab.trainer` (which checks arguments and runs chunks) so that both
stay small. A :class:`~hessian_lab.StatefulLoss` threads the model state through the carry: the
optimizer sees the train-mode loss (BatchNorm on the step's batch statistics, dropout with a key
drawn from the run's key and the step), the running statistics become the model's ``new_state``
(as flax's ``mutable=["batch_stats"]`` or equinox's returned ``State`` give them), and the
callbacks see the state of theta_t in ``StepInfo.state``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from ._conv_layout import in_loop
from ._stateful import StatefulLoss
from .callback_protocol import StepInfo, run_callbacks
from .optim import current_learning_rate

__all__ = ["DROPOUT_STREAM", "Carry", "RunArgs", "make_scan"]

# The dropout key of step t is fold_in(fold_in(key, DROPOUT_STREAM), t); shuffling folds the
# epoch into the key directly, so the two streams never share a key.
DROPOUT_STREAM = 0x64726F70


class Carry(NamedTuple):
    """The state a chunk carries from step to step (one member of a population).

    ``done``/``reason``/``stop_step``: whether, why (an index into ``STOP_REASONS``) and at which
    step the run stopped; a stopped run is frozen. ``state``: the model state (BatchNorm
    statistics) of a :class:`~hessian_lab.StatefulLoss`, None otherwise.
    """

    params: Any
    opt_state: Any
    cb_states: tuple
    done: jax.Array
    reason: jax.Array
    stop_step: jax.Array
    state: Any = None


class RunArgs(NamedTuple):
    """Arguments of a run that the compiled chunk takes as arrays (never as constants)."""

    data: Any
    num_steps: jax.Array
    loss_goal: jax.Array
    accuracy_goal: jax.Array
    threshold: jax.Array


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_scan(loss_fn, optimizer, callbacks, accuracy_fn, batch_size):
    """Return ``scan(carry, args, key, start, length) -> (carry, metrics)`` (not jitted)."""
    fdt = jnp.result_type(float)
    stateful = isinstance(loss_fn, StatefulLoss)

    def batch_at(data, key, step):
        if batch_size is None:
            return data
        n = jax.tree.leaves(data)[0].shape[0]
        per_epoch = n // batch_size
        perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
        idx = lax.dynamic_slice_in_dim(perm, (step % per_epoch) * batch_size, batch_size)
        return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)

    def value_and_grad(carry, batch, key, step):
        """``(loss, grads, new_state)`` of the step's loss at ``carry.params``."""
        if not stateful:
            loss, grads = jax.value_and_grad(loss_fn)(carry.params, batch)
            return loss, grads, None
        dkey = None
        if loss_fn.dropout:
            dkey = jax.random.fold_in(jax.random.fold_in(key, DROPOUT_STREAM), step)

        def train_loss(p):
            return loss_fn.fn(p, carry.state, batch, train=True, key=dkey)

        (loss, new_state), grads = jax.value_and_grad(train_loss, has_aux=True)(carry.params)
        # A float32 model under x64 computes float64 statistics; the carry keeps its dtypes.
        same = lambda new, old: new.astype(old.dtype) if new.dtype != old.dtype else new  # noqa: E731
        return loss, grads, jax.tree.map(same, new_state, carry.state)

    def one_step(args, key, carry, step):
        def run(carry):
            batch = batch_at(args.data, key, step)
            loss, grads, new_state = value_and_grad(carry, batch, key, step)
            loss = jnp.asarray(loss, fdt)
            lr = jnp.asarray(current_learning_rate(carry.opt_state), fdt)
            metrics = {"loss": loss, "learning_rate": lr}
            acc = jnp.asarray(-jnp.inf, fdt)
            if accuracy_fn is not None:
                extra = (carry.state,) if stateful else ()
                acc = jnp.asarray(accuracy_fn(carry.params, *extra, batch), fdt)
                metrics["accuracy"] = acc
            info = StepInfo(
                step, carry.params, carry.opt_state, grads, loss, batch, args.data, lr, carry.state
            )
            cb_states, cb_metrics = run_callbacks(callbacks, carry.cb_states, info)
            metrics |= cb_metrics
            updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
            params = optax.apply_updates(carry.params, updates)
            bad = ~jnp.isfinite(loss) | (loss > args.threshold) | ~_all_finite(params)
            reason = jnp.select(
                [bad, loss <= args.loss_goal, acc >= args.accuracy_goal], [2, 3, 4], 0
            ).astype(jnp.int32)
            stop = reason > 0
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(stop, b, a), new, old)  # noqa: E731
            new = Carry(
                keep(params, carry.params),
                keep(opt_state, carry.opt_state),
                cb_states,
                stop,
                reason,
                jnp.where(stop, step, carry.stop_step),
                keep(new_state, carry.state) if stateful else None,
            )
            return new, metrics

        shapes = jax.eval_shape(run, carry)[1]

        def skip(carry):
            return carry, {k: jnp.full(s.shape, jnp.nan, s.dtype) for k, s in shapes.items()}

        active = ~carry.done & (step < args.num_steps)
        return lax.cond(active, in_loop(run), skip, carry)  # fast convolutions in the scan

    def scan(carry, args, key, start, length):
        steps = start + jnp.arange(length, dtype=start.dtype)
        return lax.scan(lambda c, t: one_step(args, key, c, t), carry, steps)

    return scan
