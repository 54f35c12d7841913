"""A host loop over jitted chunks of training steps, for any optax optimizer.

Build the compiled step once, then train with it as often as a sweep needs::

    step = make_step(loss_fn, optimizer, callbacks=[sharpness(loss_fn)], chunk_size=100)
    for lr in learning_rates:
        res = train(step, params, data, num_steps=1000, hyperparams={"learning_rate": lr})

:func:`make_step` returns a :class:`Step` holding the jitted chunk (``Step.run``): one
``lax.scan`` of ``chunk_size`` steps, full-batch GD (``batch_size=None``) or minibatch SGD with
seeded epoch shuffling. Everything a sweep changes -- the optimizer's injected hyperparameters
(``hyperparams=``), the data, the goals, the divergence threshold, the shuffling key -- enters
the chunk as an array, so reusing one step traces once per data shape. A new ``make_step``
compiles anew; there is no cache anywhere else. :func:`train` transfers each chunk's metrics to
the host once.

Step t (0-based) evaluates the loss, gradient and callbacks at theta_t, then applies update t.
``history["loss"][t]`` is L(theta_t) on the step's batch (the training loss for GD). A run stops
at the first step t where

* the loss is non-finite, above ``divergence_threshold``, or update t makes params non-finite:
  the run is *diverged at step t* (no exception; theta_t is returned, update t is not applied);
  "diverged" means only this: inputs that were finite and valid blew up during training;
* ``loss <= loss_goal`` or ``accuracy >= accuracy_goal`` (theta_t reached the goal);
* or after ``num_steps`` updates.

Bad input is never reported as divergence: :func:`train` refuses it before any work with a
one-line ``ValueError`` naming the argument (see its Raises), and a loss already non-finite at
the initial params (step 0, no update applied: e.g. ``cross_entropy`` labels outside
``[0, k)``, NaN under ``jit``) is raised after the first chunk, naming ``data``.

Minibatches: epoch e uses the permutation ``jax.random.permutation(fold_in(key, e), n)`` and
``n // batch_size`` batches (the remainder is dropped).

A :class:`~hessian_lab.StatefulLoss` (BatchNorm, dropout) in place of ``loss_fn`` threads the
model state through the carry (``train(..., state=)``, ``TrainResult.state``; :mod:`._step`).

The engine pieces :class:`Carry`, :class:`RunArgs`, :func:`init_carry` and :func:`run_args` are
public so that :mod:`hessian_lab.population` can vmap or shard ``Step.scan`` over members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import progress as progress_lib
from ._inputs import (
    MAX_STEP,
    check_data,
    check_finite,
    check_hyperparams,
    check_initial_loss,
    check_key,
    check_opt_state,
    check_params,
    check_real,
    with_hyperparams,
)
from ._stateful import StatefulLoss
from ._step import Carry as Carry
from ._step import RunArgs as RunArgs
from ._step import make_scan
from .callbacks import Callback
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import save_checkpoint as save_checkpoint
from .history import STOP_REASONS, History
from .history import load_history as load_history
from .history import save_history as save_history

__all__ = [
    "STOP_REASONS",
    "Carry",
    "History",
    "RunArgs",
    "Step",
    "TrainResult",
    "check_state",
    "init_carry",
    "load_checkpoint",
    "load_history",
    "make_step",
    "run_args",
    "save_checkpoint",
    "save_history",
    "train",
]


class TrainResult(NamedTuple):
    """What :func:`train` returns: final params and optimizer state, history, callback states,
    and the final model state of a :class:`~hessian_lab.StatefulLoss` (None otherwise)."""

    params: Any
    opt_state: Any
    history: History
    callback_states: tuple
    state: Any = None


class Step(NamedTuple):
    """A training step and its compiled chunk, made by :func:`make_step`; reuse it to reuse code.

    Attributes:
      scan: ``scan(carry, args, key, start, length) -> (carry, metrics)``: steps ``start ..
        start + length - 1`` as one ``lax.scan``; pure and not jitted (populations vmap it).
      run: ``jax.jit(scan, static_argnames="length")``: the compiled chunk :func:`train` calls.
        Its compile cache lives in this object, one program per data shape and chunk length.
      loss_fn, optimizer, callbacks, accuracy_fn, batch_size, chunk_size: as given.
    """

    scan: Callable
    run: Callable
    loss_fn: Callable
    optimizer: optax.GradientTransformation
    callbacks: tuple
    accuracy_fn: Callable | None
    batch_size: int | None
    chunk_size: int


def make_step(
    loss_fn,
    optimizer: optax.GradientTransformation,
    *,
    callbacks=(),
    accuracy_fn=None,
    batch_size: int | None = None,
    chunk_size: int = 100,
) -> Step:
    """Build the jitted chunk of training steps that :func:`train` runs.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (mean over the batch), or a
        :class:`~hessian_lab.StatefulLoss` (BatchNorm, dropout): each step then takes the
        gradient of the train-mode loss at the carried model state and carries its new state
        (running statistics) on; :func:`train` needs the initial ``state``.
      optimizer: any optax transformation; hyperparameters a sweep changes should be injected
        (:func:`hessian_lab.optim.make_optimizer`) so they enter as state, not as constants.
      callbacks: :class:`~hessian_lab.callbacks.Callback` s run inside the step.
      accuracy_fn: optional ``accuracy_fn(params, batch) -> scalar`` recorded as ``accuracy``
        (``accuracy_fn(params, state, batch)`` with a :class:`~hessian_lab.StatefulLoss`).
      batch_size: None for full-batch GD, else the minibatch size (an int >= 1; checked
        against the data's size by :func:`train`).
      chunk_size: steps per jitted scan chunk (one host transfer per chunk).

    Returns:
      :class:`Step`. Nothing is compiled until the first :func:`train`; every later run with the
      same data shapes and ``min(chunk_size, num_steps)`` reuses that program.

    Raises:
      ValueError: ``loss_fn``/``accuracy_fn`` not callable, an optimizer without
        ``init``/``update``, a callback that is not a ``Callback``, bad ``batch_size`` or
        ``chunk_size``.
    """
    if not (callable(loss_fn) or isinstance(loss_fn, StatefulLoss)):
        raise ValueError(
            f"loss_fn: must be callable or a StatefulLoss, got {type(loss_fn).__name__}"
        )
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise ValueError(f"optimizer: expected an optax transformation, got {optimizer!r}")
    if accuracy_fn is not None and not callable(accuracy_fn):
        raise ValueError(f"accuracy_fn: must be callable or None, got {accuracy_fn!r}")
    if not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1):
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    if batch_size is not None and not (
        isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
    ):
        raise ValueError(
            f"batch_size: must be None (full batch) or an int >= 1, got {batch_size!r}"
        )
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise ValueError(
                f"callbacks: expected hessian_lab.callbacks.Callback, got {type(cb).__name__}"
            )
    scan = make_scan(loss_fn, optimizer, callbacks, accuracy_fn, batch_size)
    run = jax.jit(scan, static_argnames="length")
    return Step(scan, run, loss_fn, optimizer, callbacks, accuracy_fn, batch_size, chunk_size)


def run_args(
    step: Step,
    data,
    *,
    num_steps: int,
    loss_goal: float | None = None,
    accuracy_goal: float | None = None,
    divergence_threshold: float | None = None,
) -> RunArgs:
    """Check a run's arguments against ``step`` and return them as the arrays its chunk takes.

    Raises:
      ValueError: ``step`` not a :class:`Step`, mismatched data shapes, no examples, NaN/inf in
        the data, data smaller than the step's ``batch_size``, ``num_steps`` not an int in
        ``[1, 2**31 - 1 - chunk_size]``, a NaN or non-numeric goal or threshold,
        ``accuracy_goal`` without the step's ``accuracy_fn``.
    """
    if not isinstance(step, Step):
        raise ValueError(f"step: expected a trainer.Step from make_step, got {type(step).__name__}")
    limit = MAX_STEP - step.chunk_size
    if not (
        isinstance(num_steps, int | np.integer)
        and not isinstance(num_steps, bool)
        and 1 <= num_steps <= limit
    ):
        raise ValueError(f"num_steps: must be an int in [1, {limit}], got {num_steps!r}")
    for name, v in (
        ("loss_goal", loss_goal),
        ("accuracy_goal", accuracy_goal),
        ("divergence_threshold", divergence_threshold),
    ):
        check_real(name, v)
    check_data(data, step.batch_size)
    if accuracy_goal is not None and step.accuracy_fn is None:
        raise ValueError("accuracy_goal: needs a step made with accuracy_fn")
    fdt = jnp.result_type(float)
    f = lambda v, default: jnp.asarray(default if v is None else v, fdt)  # noqa: E731
    return RunArgs(
        jax.tree.map(jnp.asarray, data),
        jnp.asarray(int(num_steps), jnp.int32),
        f(loss_goal, -jnp.inf),
        f(accuracy_goal, jnp.inf),
        f(divergence_threshold, jnp.inf),
    )


def init_carry(step: Step, params, opt_state, state=None) -> Carry:
    """The carry of a run starting at ``params``/``opt_state`` (and model ``state``): fresh
    callback states, running."""
    cb_states = tuple(cb.init(params) for cb in step.callbacks)
    return Carry(
        params,
        opt_state,
        cb_states,
        jnp.asarray(False),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(-1, jnp.int32),
        state,
    )


def check_state(step: Step, state) -> None:
    """Refuse a ``state`` missing for a stateful step, given to a stateless one, or non-finite."""
    stateful = isinstance(step.loss_fn, StatefulLoss)
    if stateful and state is None:
        raise ValueError(
            "state: the step trains a StatefulLoss, so train needs the initial model state "
            "(e.g. StatefulModel.state)"
        )
    if not stateful and state is not None:
        raise ValueError("state: given, but the step's loss_fn is stateless (not a StatefulLoss)")
    if state is not None:
        check_finite("state", state)


def train(
    step: Step,
    params,
    data,
    *,
    num_steps: int,
    key=None,
    hyperparams: dict[str, Any] | None = None,
    opt_state=None,
    loss_goal: float | None = None,
    accuracy_goal: float | None = None,
    divergence_threshold: float | None = None,
    progress=None,
    state=None,
) -> TrainResult:
    """Train ``params`` on ``data`` with a compiled ``step``; return final state and history.

    Args:
      step: from :func:`make_step` (loss, optimizer, callbacks, batch size, chunk size). Reuse
        it across a sweep: it holds the compiled program.
      params: initial params (any pytree).
      data: pytree of arrays with a common leading axis n (e.g. ``Dataset(x, y)``).
      num_steps: maximum number of updates.
      key: PRNG key for epoch shuffling when the step has a ``batch_size`` (default
        ``jax.random.key(0)``).
      hyperparams: injected hyperparameters to set before training (e.g. ``{"learning_rate": 0.1}``).
      opt_state: initial optimizer state (default ``optimizer.init(params)``; e.g. from
        :func:`hessian_lab.optim.gi_adam_init` or a checkpoint).
      loss_goal, accuracy_goal: stop when reached.
      divergence_threshold: a loss above it marks divergence (default: only non-finite losses).
      progress: None, a host callable ``progress(done, total)`` called after every chunk (in
        steps; ends at ``num_steps`` even when the run stops early), or True for a progress bar
        with an ETA (:mod:`hessian_lab.progress`).
      state: the initial model state, required exactly when the step's loss is a
        :class:`~hessian_lab.StatefulLoss` (e.g. ``StatefulModel.state``).

    Returns:
      :class:`TrainResult`.

    Raises:
      ValueError: one line naming the argument, before any work: everything :func:`run_args`
        rejects (empty or non-finite data, ``num_steps``, goals), params with NaN/inf, an
        ``opt_state`` with NaN or non-finite injected hyperparameters, ``hyperparams`` that
        are unknown, not finite or out of range (``learning_rate <= 0``), a ``key`` that is not
        a PRNG key, a bad ``progress``, a ``state`` missing, unexpected or non-finite. After the first chunk, a stop at step 0 is bad input,
        not divergence: a non-finite initial loss (``data``), one above the threshold
        (``divergence_threshold``), a NaN first update (``optimizer``; see ``_inputs``).
    """
    args = run_args(
        step,
        data,
        num_steps=num_steps,
        loss_goal=loss_goal,
        accuracy_goal=accuracy_goal,
        divergence_threshold=divergence_threshold,
    )
    progress_lib.check(progress)
    check_params(params)
    check_state(step, state)
    check_hyperparams(hyperparams)
    if opt_state is not None:
        check_opt_state(step.optimizer, params, opt_state)
    opt_state = step.optimizer.init(params) if opt_state is None else opt_state
    opt_state = with_hyperparams(opt_state, hyperparams)
    if key is not None:
        check_key(key)
    key = jax.random.key(0) if key is None else key
    carry = init_carry(step, params, opt_state, state)
    length = min(step.chunk_size, num_steps)
    chunks = []
    with progress_lib.reporter(progress, num_steps) as report:
        for start in range(0, num_steps, length):
            carry, metrics = step.run(carry, args, key, jnp.asarray(start, jnp.int32), length)
            metrics, done = jax.device_get((metrics, carry.done))  # the one host sync per chunk
            chunks.append(metrics)
            report(num_steps if done else min(start + length, num_steps))
            if done:
                break
    reason, stop_step = int(carry.reason), int(carry.stop_step)
    kept = stop_step + 1 if reason else num_steps
    metrics = {k: np.concatenate([c[k] for c in chunks])[:kept] for k in chunks[0]}
    check_initial_loss(reason, stop_step, metrics["loss"][None], divergence_threshold)
    history = History(
        metrics,
        STOP_REASONS[reason or 1],
        stop_step if reason else -1,
        stop_step if reason else num_steps,
    )
    return TrainResult(carry.params, carry.opt_state, history, carry.cb_states, carry.state)
