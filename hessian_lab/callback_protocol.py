"""What a callback is: a pure measurement the training step runs at a cadence.

A callback is an optax-style pure pair: ``Callback(init, update, every)`` with
``init(params) -> state`` and ``update(state, info: StepInfo) -> (state, metrics)``, where
``metrics`` is a dict of float scalars. :func:`run_callbacks` calls ``update`` under
``lax.cond(step % every == 0, ...)``, so a callback costs nothing at the other steps and never
talks to the host: its metrics stay on device with the rest of a scan chunk.

Convention: at a step where a callback does not run, each of its metrics is NaN. Metrics at step
t are measured at the params theta_t *before* update t (the same params the step's loss and
gradient see), and, for a model with state, at its state ``StepInfo.state`` (:func:`stateful`).
The measurements themselves live in :mod:`hessian_lab.callbacks`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import tree as tu
from ._full_data import full_data_hvp
from ._stateful import StatefulLoss, curvature_loss
from .data import subset_indices

__all__ = [
    "Callback",
    "StepInfo",
    "check_every",
    "full_data_hessian",
    "random_unit",
    "run_callbacks",
    "stateful",
    "step_data",
]


class StepInfo(NamedTuple):
    """What a callback sees at step t (fields a loop does not provide stay None).

    Attributes:
      step: int scalar t.
      params: theta_t.
      opt_state: optimizer state before update t.
      grads: gradient of the step's loss at theta_t.
      loss: the step's loss at theta_t (minibatch loss under SGD).
      batch: the step's batch (pytree, leading axis = batch size).
      data: the full training set (pytree, leading axis n).
      learning_rate: eta_t, the rate update t applies (NaN if unknown).
      state: the model state at step t (BatchNorm statistics), None for a stateless model;
        callbacks given a :class:`~hessian_lab.StatefulLoss` measure the loss at it.
    """

    step: Any
    params: Any
    opt_state: Any = None
    grads: Any = None
    loss: Any = None
    batch: Any = None
    data: Any = None
    learning_rate: Any = None
    state: Any = None


class Callback(NamedTuple):
    """A pure measurement: ``init(params) -> state``, ``update(state, info) -> (state, metrics)``."""

    init: Callable[[Any], Any]
    update: Callable[[Any, StepInfo], tuple[Any, dict[str, jax.Array]]]
    every: int = 1


def check_every(every: int) -> int:
    """Return ``every`` if it is a valid cadence (an int >= 1), else raise ValueError."""
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every: must be an int >= 1, got {every!r}")
    return every


def run_callbacks(callbacks: Sequence[Callback], states: Sequence[Any], info: StepInfo):
    """Run each callback whose cadence divides ``info.step``; NaN metrics for the others.

    Args:
      callbacks: the callbacks.
      states: their states, in the same order.
      info: the step.

    Returns:
      ``(new_states, metrics)``: a tuple of states and one dict merging all metrics (float).

    Raises:
      ValueError: two callbacks emit the same metric name, or ``states`` has the wrong length.
    """
    if len(states) != len(callbacks):
        raise ValueError(f"states: expected {len(callbacks)} states, got {len(states)}")
    new_states, metrics = [], {}
    for cb, state in zip(callbacks, states, strict=True):
        shapes = jax.eval_shape(cb.update, state, info)[1]

        def skip(state, info, shapes=shapes):
            return state, {k: jnp.full(s.shape, jnp.nan, s.dtype) for k, s in shapes.items()}

        state, m = lax.cond(info.step % cb.every == 0, cb.update, skip, state, info)
        for k, v in m.items():
            if k in metrics:
                raise ValueError(f"callbacks: two callbacks emit the metric {k!r}")
            metrics[k] = v
        new_states.append(state)
    return tuple(new_states), metrics


def stateful(factory: Callable[..., Callback]) -> Callable[..., Callback]:
    """Let a callback constructor ``factory(loss_fn, ...)`` take a :class:`StatefulLoss` too.

    Given a stateless ``loss_fn`` the constructor is called as it is. Given a
    :class:`~hessian_lab.StatefulLoss`, every update measures
    ``curvature_loss(loss_fn, info.state)``: the loss at the run's current model state, in the
    loss's mode ("train": the measured batch's statistics; "eval": the running ones), dropout
    off. The constructor runs once more per traced update (it only checks and closes).
    """

    @functools.wraps(factory)
    def make(loss_fn, *args, **kwargs):
        if not isinstance(loss_fn, StatefulLoss):
            return factory(loss_fn, *args, **kwargs)
        first = factory(curvature_loss(loss_fn, None), *args, **kwargs)  # checks, init, every

        def update(cb_state, info):
            if info.state is None:
                raise ValueError(
                    "state: a callback on a StatefulLoss needs StepInfo.state (the model state)"
                )
            at_state = factory(curvature_loss(loss_fn, info.state), *args, **kwargs)
            return at_state.update(cb_state, info)

        return Callback(first.init, update, first.every)

    return make


def step_data(data, info: StepInfo):
    """The data a measurement runs on: ``data`` when given, else the run's training set."""
    if data is not None:
        return data
    if info.data is None:
        raise ValueError("data: pass data= to the callback or provide StepInfo.data")
    return info.data


def full_data_hessian(loss_fn, data, chunk_size, linearize=False, subset=None):
    """``info -> full_data_hvp`` at the step's params, over ``data`` or the run's training set,
    or over a fixed random ``subset`` of it."""
    if not isinstance(linearize, bool):
        raise ValueError(f"linearize: must be True or False, got {linearize!r}")
    if subset is not None:  # checked here against data's size when it is given
        total = jax.tree.leaves(data)[0].shape[0] if data is not None else subset
        subset_indices(total, subset, name="subset")

    def make(info):
        d = step_data(data, info)
        if subset is not None:
            # The same examples at every measurement (and those of
            # data.random_subset(train, subset, seed=0)); a gather of `subset` rows per run.
            idx = subset_indices(jax.tree.leaves(d)[0].shape[0], subset, name="subset")
            d = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), d)
        n = jax.tree.leaves(d)[0].shape[0]
        return full_data_hvp(
            loss_fn, info.params, d, chunk_size=chunk_size or n, linearize=linearize
        )

    return make


@jax.jit
def random_unit(key, params):
    """A random unit vector shaped like ``params`` (jitted: one compile per params structure)."""
    return tu.normalize(tu.random_like(key, params))
