"""A host loop over jitted chunks of training steps, for any optax optimizer.

:func:`train` runs full-batch GD (``batch_size=None``) or minibatch SGD with seeded epoch
shuffling, in chunks of ``chunk_size`` steps: one jitted ``lax.scan`` per chunk, one transfer of
that chunk's metrics to the host. Everything a sweep changes -- the optimizer's injected
hyperparameters (``hyperparams=``), the data, the goals, the divergence threshold, the shuffling
key -- enters the compiled chunk as an array, so a sweep over learning rates traces once.

Step t (0-based) evaluates the loss, gradient and callbacks at theta_t, then applies update t.
``history["loss"][t]`` is L(theta_t) on the step's batch (the training loss for GD). A run stops
at the first step t where

* the loss is non-finite, above ``divergence_threshold``, or update t makes params non-finite:
  the run is *diverged at step t* (no exception; theta_t is returned, update t is not applied);
* ``loss <= loss_goal`` or ``accuracy >= accuracy_goal`` (theta_t reached the goal);
* or after ``num_steps`` updates.

Minibatches: epoch e uses the permutation ``jax.random.permutation(fold_in(key, e), n)`` and
``n // batch_size`` batches (the remainder is dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from . import io
from .callbacks import Callback, StepInfo, run_callbacks
from .optim import current_learning_rate, set_hyperparams

__all__ = [
    "History",
    "TrainResult",
    "load_checkpoint",
    "load_history",
    "save_checkpoint",
    "save_history",
    "train",
]

STOP_REASONS = ("running", "num_steps", "diverged", "loss_goal", "accuracy_goal")


@dataclass(frozen=True)
class History:
    """Per-step host scalars of one run.

    Attributes:
      metrics: name -> numpy array with leading axis = steps recorded (``loss``, ``learning_rate``,
        ``accuracy`` if an ``accuracy_fn`` was given, and every callback metric; NaN where a
        callback did not run).
      stop_reason: one of "num_steps", "diverged", "loss_goal", "accuracy_goal".
      stop_step: the step at which the run stopped (-1 if it ran all ``num_steps``).
      num_updates: updates applied; the returned params are theta_{num_updates}.
    """

    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    stop_reason: str = "num_steps"
    stop_step: int = -1
    num_updates: int = 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    @property
    def diverged(self) -> bool:
        return self.stop_reason == "diverged"

    @property
    def diverged_step(self) -> int:
        """The step at which the run diverged, or -1."""
        return self.stop_step if self.diverged else -1


class TrainResult(NamedTuple):
    """What :func:`train` returns: final params and optimizer state, history, callback states."""

    params: Any
    opt_state: Any
    history: History
    callback_states: tuple


class _Static(NamedTuple):
    """The hashable, compile-time part of a run (jit static argument)."""

    loss_fn: Any
    optimizer: Any
    callbacks: tuple
    accuracy_fn: Any
    batch_size: int | None
    chunk: int


class _Carry(NamedTuple):
    params: Any
    opt_state: Any
    cb_states: tuple
    done: jax.Array
    reason: jax.Array
    stop_step: jax.Array


class _Shared(NamedTuple):
    """Run arguments shared by all members of a population (arrays, never constants)."""

    data: Any
    num_steps: jax.Array
    loss_goal: jax.Array
    accuracy_goal: jax.Array
    threshold: jax.Array


def _batch(static, data, key, step):
    if static.batch_size is None:
        return data
    n = jax.tree.leaves(data)[0].shape[0]
    per_epoch = n // static.batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), n)
    idx = lax.dynamic_slice_in_dim(perm, (step % per_epoch) * static.batch_size, static.batch_size)
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _step(static, shared, key, carry, step):
    fdt = jnp.result_type(float)

    def run(carry):
        batch = _batch(static, shared.data, key, step)
        loss, grads = jax.value_and_grad(static.loss_fn)(carry.params, batch)
        loss = jnp.asarray(loss, fdt)
        lr = jnp.asarray(current_learning_rate(carry.opt_state), fdt)
        metrics = {"loss": loss, "learning_rate": lr}
        acc = jnp.asarray(-jnp.inf, fdt)
        if static.accuracy_fn is not None:
            acc = metrics["accuracy"] = jnp.asarray(static.accuracy_fn(carry.params, batch), fdt)
        info = StepInfo(step, carry.params, carry.opt_state, grads, loss, batch, shared.data, lr)
        cb_states, cb_metrics = run_callbacks(static.callbacks, carry.cb_states, info)
        metrics |= cb_metrics
        updates, opt_state = static.optimizer.update(grads, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        bad = ~jnp.isfinite(loss) | (loss > shared.threshold) | ~_all_finite(params)
        reason = jnp.select(
            [bad, loss <= shared.loss_goal, acc >= shared.accuracy_goal], [2, 3, 4], 0
        ).astype(jnp.int32)
        stop = reason > 0
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(stop, b, a), new, old)  # noqa: E731
        new = _Carry(
            keep(params, carry.params),
            keep(opt_state, carry.opt_state),
            cb_states,
            stop,
            reason,
            jnp.where(stop, step, carry.stop_step),
        )
        return new, metrics

    shapes = jax.eval_shape(run, carry)[1]

    def skip(carry):
        return carry, {k: jnp.full(s.shape, jnp.nan, s.dtype) for k, s in shapes.items()}

    active = ~carry.done & (step < shared.num_steps)
    return lax.cond(active, run, skip, carry)


def _chunk(static, carry, shared, key, start):
    steps = start + jnp.arange(static.chunk, dtype=start.dtype)
    return lax.scan(lambda c, t: _step(static, shared, key, c, t), carry, steps)


# One compiled program per _Static; every array argument can change without a retrace.
_run_chunk = jax.jit(_chunk, static_argnums=0, donate_argnums=())


def _check_data(data, batch_size):
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(
            "data: must be a pytree of arrays with a leading example axis, got no arrays"
        )
    shapes = [np.shape(x) for x in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        raise ValueError(
            f"data: every array needs the same leading (example) axis, got shapes {shapes}"
        )
    n = shapes[0][0]
    if batch_size is not None and not (isinstance(batch_size, int) and 1 <= batch_size <= n):
        raise ValueError(
            f"batch_size: must be None (full batch) or an int in [1, {n}], got {batch_size!r}"
        )
    return n


def _prepare(
    loss_fn,
    optimizer,
    data,
    *,
    num_steps,
    batch_size,
    callbacks,
    accuracy_fn,
    chunk_size,
    loss_goal,
    accuracy_goal,
    divergence_threshold,
):
    _check_data(data, batch_size)
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"num_steps: must be an int >= 1, got {num_steps!r}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ValueError(
                f"callbacks: expected hessian_lab.callbacks.Callback, got {type(cb).__name__}"
            )
    if accuracy_goal is not None and accuracy_fn is None:
        raise ValueError("accuracy_goal: needs accuracy_fn")
    static = _Static(
        loss_fn, optimizer, callbacks, accuracy_fn, batch_size, min(chunk_size, num_steps)
    )
    fdt = jnp.result_type(float)
    f = lambda v, default: jnp.asarray(default if v is None else v, fdt)  # noqa: E731
    shared = _Shared(
        jax.tree.map(jnp.asarray, data),
        jnp.asarray(num_steps, jnp.int32),
        f(loss_goal, -jnp.inf),
        f(accuracy_goal, jnp.inf),
        f(divergence_threshold, jnp.inf),
    )
    return static, shared


def _init_carry(static, params, opt_state):
    cb_states = tuple(cb.init(params) for cb in static.callbacks)
    return _Carry(
        params,
        opt_state,
        cb_states,
        jnp.asarray(False),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(-1, jnp.int32),
    )


def train(
    loss_fn,
    params,
    optimizer: optax.GradientTransformation,
    data,
    *,
    num_steps: int,
    batch_size: int | None = None,
    key=None,
    callbacks=(),
    accuracy_fn=None,
    hyperparams: dict[str, Any] | None = None,
    opt_state=None,
    loss_goal: float | None = None,
    accuracy_goal: float | None = None,
    divergence_threshold: float | None = None,
    chunk_size: int = 100,
) -> TrainResult:
    """Train ``params`` on ``data`` with ``optimizer``; return final state and per-step history.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (mean over the batch). Reuse the same function
        object across a sweep: it is part of the compile-time key.
      params: initial params (any pytree).
      optimizer: any optax transformation; reuse the same object across a sweep.
      data: pytree of arrays with a common leading axis n (e.g. ``Dataset(x, y)``).
      num_steps: maximum number of updates.
      batch_size: None for full-batch GD, else the minibatch size (needs ``key``).
      key: PRNG key for epoch shuffling (default ``jax.random.key(0)``).
      callbacks: :class:`~hessian_lab.callbacks.Callback` s run inside the step.
      accuracy_fn: optional ``accuracy_fn(params, batch) -> scalar`` recorded as ``accuracy``.
      hyperparams: injected hyperparameters to set before training (e.g. ``{"learning_rate": 0.1}``).
      opt_state: initial optimizer state (default ``optimizer.init(params)``; e.g. from
        :func:`hessian_lab.optim.gi_adam_init` or a checkpoint).
      loss_goal, accuracy_goal: stop when reached.
      divergence_threshold: a loss above it marks divergence (default: only non-finite losses).
      chunk_size: steps per jitted scan chunk (one host transfer per chunk).

    Returns:
      :class:`TrainResult`.

    Raises:
      ValueError: mismatched data shapes, bad ``batch_size``/``num_steps``/``chunk_size``, unknown
        hyperparameter names.
    """
    static, shared = _prepare(
        loss_fn,
        optimizer,
        data,
        num_steps=num_steps,
        batch_size=batch_size,
        callbacks=callbacks,
        accuracy_fn=accuracy_fn,
        chunk_size=chunk_size,
        loss_goal=loss_goal,
        accuracy_goal=accuracy_goal,
        divergence_threshold=divergence_threshold,
    )
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    opt_state = set_hyperparams(opt_state, hyperparams or {})
    key = jax.random.key(0) if key is None else key
    carry = _init_carry(static, params, opt_state)
    chunks = []
    for start in range(0, num_steps, static.chunk):
        carry, metrics = _run_chunk(static, carry, shared, key, jnp.asarray(start, jnp.int32))
        metrics, done = jax.device_get((metrics, carry.done))  # the one host sync per chunk
        chunks.append(metrics)
        if done:
            break
    reason, stop_step = int(carry.reason), int(carry.stop_step)
    length = stop_step + 1 if reason else num_steps
    metrics = {k: np.concatenate([c[k] for c in chunks])[:length] for k in chunks[0]}
    history = History(
        metrics,
        STOP_REASONS[reason or 1],
        stop_step if reason else -1,
        stop_step if reason else num_steps,
    )
    return TrainResult(carry.params, carry.opt_state, history, carry.cb_states)


def save_history(
    history: History, run_dir: str | os.PathLike, *, config: dict | None = None
) -> Path:
    """Save a history as ``arrays.npz`` + ``history.csv`` (scalar metrics) in ``run_dir``, atomically."""
    arrays = dict(history.metrics)
    summary = {
        "stop_reason": history.stop_reason,
        "stop_step": history.stop_step,
        "num_updates": history.num_updates,
    }
    run_dir = io.save_run(
        run_dir, config=config or {}, arrays=arrays, summary=summary, kind="history"
    )
    n = len(next(iter(arrays.values()))) if arrays else 0
    cols = {"step": np.arange(n)} | {k: v for k, v in arrays.items() if np.ndim(v) == 1}
    io.write_csv(Path(run_dir) / "history.csv", cols)
    return Path(run_dir)


def load_history(run_dir: str | os.PathLike) -> History:
    """Load a history saved by :func:`save_history`."""
    _, arrays, summary = io.load_run(run_dir)
    return History(
        arrays, summary["stop_reason"], int(summary["stop_step"]), int(summary["num_updates"])
    )


def save_checkpoint(path: str | os.PathLike, tree) -> None:
    """Save a pytree (e.g. ``(params, opt_state)``) as an npz of its leaves plus its structure text."""
    leaves, treedef = jax.tree.flatten(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(x) for i, x in enumerate(leaves)}
    arrays["treedef"] = np.asarray(str(treedef))
    import io as _io

    buf = _io.BytesIO()
    np.savez(buf, **arrays)
    io.atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, like):
    """Load a pytree saved by :func:`save_checkpoint`, with the structure of ``like``.

    ``like`` supplies the tree structure (e.g. ``(init_params, optimizer.init(init_params))``);
    the stored structure, leaf shapes and dtypes must match it.

    Raises:
      ValueError: structure, shape or dtype mismatch.
    """
    leaves, treedef = jax.tree.flatten(like)
    with np.load(path, allow_pickle=False) as z:
        if str(z["treedef"]) != str(treedef):
            raise ValueError(
                f"like: structure differs from the checkpoint's\n  saved: {z['treedef']}\n  like:  {treedef}"
            )
        out = [z[f"leaf_{i:05d}"] for i in range(len(leaves))]
    for i, (a, b) in enumerate(zip(out, leaves, strict=True)):
        if a.shape != np.shape(b) or a.dtype != np.asarray(b).dtype:
            raise ValueError(
                f"like: leaf {i} is {np.shape(b)} {np.asarray(b).dtype}, checkpoint has {a.shape} {a.dtype}"
            )
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in out])
