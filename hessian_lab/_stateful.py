"""Model state (BatchNorm statistics, dropout) for the operators, callbacks and the trainer.

A stateful model is ``apply(params, state, x, *, train, key) -> (outputs, new_state)``: with
``train=True`` BatchNorm normalises by the statistics of the batch ``x`` and returns updated
running statistics in ``new_state``; with ``train=False`` it uses the running statistics and
returns ``state`` unchanged. ``key`` is the dropout key: ``None`` switches dropout off.

:func:`stateful_loss` turns it into a :class:`StatefulLoss`, what the trainer takes in place of
``loss_fn(params, batch)``. Operators keep seeing ``loss_fn(params, batch) -> scalar``:
:func:`curvature_loss` fixes the state and the mode and returns that function, and every
callback given a :class:`StatefulLoss` does so at each measurement with the run's current state.

Which loss is measured:

- ``mode="train"`` (default): the Hessian of the loss the optimizer sees, BatchNorm using the
  statistics of the batch the loss is computed on (they depend on the parameters, and the
  Hessian includes that dependence). A full-data product over several chunks would then use
  each chunk's statistics, a different loss; it is refused unless the data are one chunk
  (``chunk_size=n``, the callbacks' default) or ``per_chunk=True`` accepts statistics per chunk.
- ``mode="eval"``: BatchNorm using the running statistics in ``state``; an ordinary sum over
  examples, so any ``chunk_size`` gives the same operator.
- dropout is off in both, unless :func:`curvature_loss` gets ``dropout=key``: then one mask,
  drawn from that key, is kept fixed for every product (the Hessian of one thinned network).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from . import losses

__all__ = [
    "CurvatureLoss",
    "StatefulLoss",
    "StatefulModel",
    "check_chunking",
    "curvature_loss",
    "stateful_loss",
]

MODES = ("train", "eval")


class StatefulModel(NamedTuple):
    """A network with state besides its parameters.

    Attributes:
      init: ``init(key) -> params``.
      apply: ``apply(params, state, x, *, train, key) -> (outputs, new_state)`` (module doc).
      state: the state at initialisation (BatchNorm: zero means, unit variances), which does
        not depend on the key, so every member of a population can start from it.
    """

    init: Callable[[jax.Array], Any]
    apply: Callable[..., tuple[Any, Any]]
    state: Any


class StatefulLoss(NamedTuple):
    """A loss with model state: what the trainer and the callbacks take for a stateful model.

    Attributes:
      fn: ``fn(params, state, batch, *, train, key) -> (loss, new_state)``.
      dropout: whether training applies dropout (the trainer then draws a key every step).
      mode: what curvature measurements use: "train" (statistics of the measured batch) or
        "eval" (running statistics); training always runs in train mode.
      per_chunk: accept per-chunk batch statistics in chunked train-mode products.
    """

    fn: Callable[..., tuple[Any, Any]]
    dropout: bool = False
    mode: str = "train"
    per_chunk: bool = False

    def with_mode(self, mode: str, *, per_chunk: bool = False) -> StatefulLoss:
        """The same loss, measured in ``mode`` ("train" or "eval")."""
        _check_mode(mode, per_chunk)
        return self._replace(mode=mode, per_chunk=per_chunk)


def _check_mode(mode: Any, per_chunk: Any) -> None:
    if mode not in MODES:
        raise ValueError(f"mode: must be 'train' or 'eval', got {mode!r}")
    if not isinstance(per_chunk, bool):
        raise ValueError(f"per_chunk: must be True or False, got {per_chunk!r}")


def stateful_loss(
    apply: Callable,
    loss: str | Callable = "mse",
    *,
    dropout: bool = False,
    mode: str = "train",
    per_chunk: bool = False,
) -> StatefulLoss:
    """Return the :class:`StatefulLoss` of ``loss(apply(params, state, x, ...), y)``.

    Args:
      apply: ``apply(params, state, x, *, train, key) -> (outputs, new_state)``.
      loss: "mse", "xent" (:mod:`hessian_lab.losses`) or ``loss(outputs, y) -> scalar``, the
        mean over the batch ``(x, y)``.
      dropout: the model has dropout and training should apply it.
      mode, per_chunk: what curvature measurements use (module doc).

    Raises:
      ValueError: a bad ``loss``, ``mode`` or ``per_chunk``, or ``dropout`` not a bool.
    """
    _check_mode(mode, per_chunk)
    if not isinstance(dropout, bool):
        raise ValueError(f"dropout: must be True or False, got {dropout!r}")
    if isinstance(loss, str):
        if loss not in ("mse", "xent"):
            raise ValueError(f"loss: must be 'mse', 'xent' or a function, got {loss!r}")
        loss = losses.output_loss(loss)  # as losses.make_loss_fn, for stateless models
    elif not callable(loss):
        raise ValueError(f"loss: must be 'mse', 'xent' or loss(outputs, y), got {loss!r}")

    def fn(params, state, batch, *, train, key=None):
        x, y = batch
        out, new_state = apply(params, state, x, train=train, key=key)
        return loss(out, y), new_state

    return StatefulLoss(fn, dropout, mode, per_chunk)


@dataclasses.dataclass(frozen=True)
class CurvatureLoss:
    """``loss_fn(params, batch) -> scalar`` of a stateful loss at a fixed state and mode.

    Made by :func:`curvature_loss`; any operator takes it. The new state is discarded.
    """

    loss: StatefulLoss
    state: Any
    mode: str
    dropout_key: Any = None
    per_chunk: bool = False

    def __call__(self, params, batch):
        train = self.mode == "train"
        return self.loss.fn(params, self.state, batch, train=train, key=self.dropout_key)[0]


def curvature_loss(
    loss: StatefulLoss,
    state: Any,
    *,
    mode: str | None = None,
    dropout: Any = None,
    per_chunk: bool | None = None,
) -> CurvatureLoss:
    """Return ``loss_fn(params, batch) -> scalar``: ``loss`` at ``state`` in ``mode``.

    ``mode`` and ``per_chunk`` default to the loss's own. Dropout is off unless ``dropout`` is
    a PRNG key, whose mask then stays fixed for every product (module doc).

    Example:
      >>> import jax.numpy as jnp
      >>> def apply(p, s, x, *, train, key):  # a BatchNorm without affine parameters
      ...     mean = x.mean(0) if train else s
      ...     return (x - mean) * p, s
      >>> loss = stateful_loss(apply, lambda out, y: jnp.mean(out**2))
      >>> x = jnp.array([1.0, 3.0])
      >>> float(curvature_loss(loss, 0.0)(2.0, (x, x))), float(curvature_loss(loss, 0.0, mode="eval")(2.0, (x, x)))
      (4.0, 20.0)
    """
    if not isinstance(loss, StatefulLoss):
        raise ValueError(
            f"loss: expected a StatefulLoss (stateful_loss), got {type(loss).__name__}"
        )
    mode = loss.mode if mode is None else mode
    per_chunk = loss.per_chunk if per_chunk is None else per_chunk
    _check_mode(mode, per_chunk)
    if dropout is not None and dropout is not False:
        if not (isinstance(dropout, jax.Array) and jax.dtypes.issubdtype(
                dropout.dtype, jax.dtypes.prng_key)):  # fmt: skip
            raise ValueError(
                f"dropout: must be None (off) or a PRNG key (jax.random.key), got {dropout!r}"
            )
    return CurvatureLoss(loss, state, mode, None if dropout is False else dropout, per_chunk)


def bind(loss_fn: Any, state: Any) -> Any:
    """``loss_fn`` itself if stateless, else its :class:`CurvatureLoss` at ``state``."""
    if isinstance(loss_fn, StatefulLoss):
        return curvature_loss(loss_fn, state)
    return loss_fn


def check_chunking(loss_fn: Any, chunk_size: int, n: int) -> None:
    """Refuse a chunked full-data product of a train-mode loss unless per-chunk is accepted."""
    if (
        isinstance(loss_fn, CurvatureLoss)
        and loss_fn.mode == "train"
        and chunk_size < n
        and not loss_fn.per_chunk
    ):
        raise ValueError(
            f"chunk_size: {chunk_size} < n={n} would normalise each chunk by its own BatchNorm "
            "statistics, a different loss from the full batch's. Use chunk_size=n (one chunk), "
            "mode='eval' (running statistics), or per_chunk=True to accept statistics per chunk"
        )
