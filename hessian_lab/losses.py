"""Losses on network outputs, averaged over examples, and the ``loss_fn(params, batch)`` adaptor.

The last axis of ``outputs`` holds the ``k`` outputs; all leading axes index examples (a sequence
model's ``(batch, T, vocab)`` logits count ``batch * T`` examples). Targets are either integer class
labels with shape ``outputs.shape[:-1]`` or arrays of the same shape as ``outputs`` (one-hot or real).

Two MSE conventions are in use (see docs/conventions.md); they differ by the factor ``k``:

- ``"per_example"`` (Cohen et al., arXiv 2103.00065): ``L = 1/(2n) sum_i ||f_i - y_i||^2``;
- ``"per_output"`` (Kalra & Barkeshli, arXiv 2302.12250): ``L = 1/(2nk) sum_i ||f_i - y_i||^2``,
  so its Hessian and sharpness are ``k`` times smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "LOSSES",
    "MSE_NORMALIZATIONS",
    "accuracy",
    "cross_entropy",
    "make_loss_fn",
    "mse",
    "output_loss",
]

MSE_NORMALIZATIONS = ("per_example", "per_output")
LOSSES = ("mse", "xent")


def _targets_like(outputs: jax.Array, targets: jax.Array, name: str) -> jax.Array:
    """Return ``targets`` as a float array shaped like ``outputs``, one-hot encoding int labels."""
    if outputs.ndim < 1:
        raise ValueError(f"outputs must have at least one axis, got shape {outputs.shape}")
    if jnp.issubdtype(targets.dtype, jnp.integer) and targets.shape == outputs.shape[:-1]:
        return jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
    if targets.shape != outputs.shape:
        raise ValueError(
            f"{name} must be int labels of shape {outputs.shape[:-1]} or an array of the outputs' "
            f"shape {outputs.shape}, got shape {targets.shape} and dtype {targets.dtype}"
        )
    return targets.astype(outputs.dtype)


def mse(outputs: jax.Array, targets: jax.Array, *, normalization: str = "per_example") -> jax.Array:
    """Return the mean squared error ``1/(2n) sum_i ||f_i - y_i||^2`` (divided by ``k`` if per_output).

    Args:
      outputs: network outputs, shape ``(..., k)``.
      targets: int labels of shape ``outputs.shape[:-1]`` (one-hot encoded to ``k`` classes) or
        targets of the outputs' shape.
      normalization: "per_example" (Cohen et al.) or "per_output" (Kalra & Barkeshli).

    Returns:
      A scalar.

    Raises:
      ValueError: for an unknown ``normalization`` or targets of the wrong shape.
    """
    if normalization not in MSE_NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {list(MSE_NORMALIZATIONS)}, got {normalization!r}"
        )
    outputs = jnp.asarray(outputs)
    y = _targets_like(outputs, jnp.asarray(targets), "targets")
    sq = (outputs - y) ** 2
    if normalization == "per_output":
        return 0.5 * jnp.mean(sq)
    return 0.5 * jnp.mean(jnp.sum(sq, axis=-1))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the softmax cross-entropy ``-1/n sum_i sum_c y_ic log softmax(z_i)_c``.

    Args:
      logits: shape ``(..., k)``.
      labels: int labels of shape ``logits.shape[:-1]`` or one-hot / probability targets of the
        logits' shape.

    Returns:
      A scalar.

    Raises:
      ValueError: for labels of the wrong shape.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1]:
        return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))
    y = _targets_like(logits, labels, "labels")
    return -jnp.mean(jnp.sum(y * logp, axis=-1))


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Return the fraction of examples whose ``argmax`` output equals the label.

    Args:
      outputs: shape ``(..., k)`` with ``k >= 2``.
      labels: int labels of shape ``outputs.shape[:-1]`` or one-hot targets (argmax taken).

    Returns:
      A scalar in ``[0, 1]``.

    Raises:
      ValueError: for a single output or labels of the wrong shape.
    """
    outputs = jnp.asarray(outputs)
    labels = jnp.asarray(labels)
    if outputs.ndim < 1 or outputs.shape[-1] < 2:
        raise ValueError(f"outputs must have shape (..., k) with k >= 2, got {outputs.shape}")
    if not (jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == outputs.shape[:-1]):
        labels = jnp.argmax(_targets_like(outputs, labels, "labels"), axis=-1)
    return jnp.mean((jnp.argmax(outputs, axis=-1) == labels).astype(outputs.dtype))


def output_loss(loss: str = "mse", **kw: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Return ``output_loss(outputs, targets) -> scalar`` for a loss name, options bound.

    Args:
      loss: "mse" or "xent".
      **kw: options of the loss (``normalization`` for "mse"; none for "xent").

    Raises:
      ValueError: for an unknown loss or option.
    """
    if loss == "mse":
        unknown = set(kw) - {"normalization"}
        if unknown:
            raise ValueError(f"mse takes only 'normalization', got {sorted(unknown)}")
        normalization = kw.get("normalization", "per_example")
        if normalization not in MSE_NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {list(MSE_NORMALIZATIONS)}, got {normalization!r}"
            )
        return lambda outputs, targets: mse(outputs, targets, normalization=normalization)
    if loss == "xent":
        if kw:
            raise ValueError(f"xent takes no options, got {sorted(kw)}")
        return cross_entropy
    raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")


def make_loss_fn(
    apply_fn: Callable[[Any, jax.Array], jax.Array], loss: str = "mse", **kw: Any
) -> Callable[[Any, tuple[jax.Array, jax.Array]], jax.Array]:
    """Return ``loss_fn(params, batch) -> scalar``, the mean loss of ``apply_fn`` on ``batch = (x, y)``.

    Args:
      apply_fn: ``apply(params, x) -> outputs``.
      loss: "mse" or "xent".
      **kw: options of the loss, e.g. ``normalization="per_output"`` for "mse".

    Raises:
      ValueError: for an unknown loss or option (before any tracing).

    Example:
      >>> import jax, jax.numpy as jnp, hessian_lab
      >>> net = hessian_lab.models.mlp(3, 2, depth=1, width=4)
      >>> loss_fn = make_loss_fn(net.apply, "mse", normalization="per_output")
      >>> loss_fn(net.init(jax.random.key(0)), (jnp.ones((5, 3)), jnp.zeros(5, int))).shape
      ()
    """
    out_loss = output_loss(loss, **kw)

    def loss_fn(params: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        x, y = batch
        return out_loss(apply_fn(params, x), y)

    return loss_fn
