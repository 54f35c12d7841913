"""Batch sharpness: the curvature of each mini-batch loss along its own gradient, averaged.

Andreyev & Beneventano 2024 (arXiv 2412.20553) define it as ``E_B[g_B^T H_B g_B / |g_B|^2]``.
Under SGD it is this quantity, not the full-batch ``lambda_max``, that settles at ``2 / eta``
("edge of stochastic stability"). Not the top eigenvalue of a minibatch Hessian.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import tree as tu
from ._conv_layout import in_loop

__all__ = ["BatchSharpnessResult", "batch_sharpness"]


class BatchSharpnessResult(NamedTuple):
    """Batch sharpness over a set of mini-batches.

    Attributes:
      value: the mean over batches of ``g_B^T H_B g_B / |g_B|^2``.
      stderr: its standard error (spread over batches; NaN for one batch).
      per_batch: the per-batch values, shape ``(num_batches,)``.
    """

    value: jax.Array
    stderr: jax.Array
    per_batch: jax.Array


def batch_sharpness(loss_fn, params: Any, batches: Any, /) -> BatchSharpnessResult:
    """Return the batch sharpness ``E_B[g_B^T H_B g_B / |g_B|^2]`` over stacked mini-batches.

    Cost: per batch one ``jax.linearize`` of the gradient (about a gradient) and one
    Hessian-vector product; batches run one at a time (``lax.map``), so memory is that of one
    batch. A batch whose gradient vanishes gives NaN (0/0), and so does the mean: never a
    silent number. Runs under ``jit``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over a batch.
      params: theta.
      batches: a pytree whose leaves share a leading axis of length ``num_batches`` >= 1;
        ``batches[i]`` (leafwise) is one mini-batch.

    Raises:
      ValueError: ``batches`` has no leaves, or leaves without a common leading axis.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)
      >>> x = jnp.stack([jnp.eye(2) * 2.0, jnp.eye(2)])  # two batches: H = 2 I and H = I / 2
      >>> res = batch_sharpness(loss, jnp.ones(2), (x, jnp.zeros((2, 2))))
      >>> float(res.value)  # (2 + 0.5) / 2
      1.25
    """
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(batches)}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            f"batches: leaves need one common leading axis (the batch index) of length >= 1, "
            f"got leading sizes {sorted(sizes, key=str)}"
        )

    def one(batch):
        g, hvp = jax.linearize(jax.grad(lambda p: loss_fn(p, batch)), params)
        return tu.vdot(g, hvp(g)) / tu.vdot(g, g)

    per = lax.map(in_loop(one), batches)  # in_loop: fast convolutions in the map on CPU
    n = per.shape[0]
    stderr = jnp.std(per, ddof=1) / jnp.sqrt(n) if n > 1 else jnp.full((), jnp.nan, per.dtype)
    return BatchSharpnessResult(jnp.mean(per), stderr, per)
