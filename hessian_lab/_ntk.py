"""Neural tangent kernel estimators: exact trace and top eigenvalue, from VJPs and JVPs.

The empirical NTK on ``n`` examples with ``o`` outputs is the ``(n o) x (n o)`` matrix ``J J^T``,
``J`` the Jacobian of the stacked outputs with respect to the parameters. Normalised like the
loss, ``K = J J^T / n`` for the per-example MSE ``0.5 mean_i ||f_i - y_i||^2`` (then ``K`` and
the Gauss-Newton matrix ``J^T J / n`` share their non-zero eigenvalues), or ``J J^T / (n o)``
for the per-output MSE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from . import tree as tu
from ._conv_layout import in_loop
from ._full_data import num_examples
from ._lanczos import EigResult, top_eigs
from ._matvec import NonFiniteError, check_finite_products, check_int, check_k_iters, nan_unless
from ._operators import Operator, ntk

__all__ = ["ntk_top_eig", "ntk_trace"]

PyTree = Any
Normalization = Literal["per_example", "per_output", "none"]


def _scale(normalization: str, n: int, o: int) -> float:
    if normalization == "per_example":
        return 1.0 / n
    if normalization == "per_output":
        return 1.0 / (n * o)
    if normalization == "none":
        return 1.0
    raise ValueError(
        f"normalization: must be 'per_example', 'per_output' or 'none', got {normalization!r}"
    )


def ntk_trace(
    apply_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    x: Any,
    /,
    *,
    chunk_size: int | None = None,
    normalization: Normalization = "per_example",
) -> jax.Array:
    """Return the exact NTK trace ``tr(J J^T) / n = (1/n) sum_{i,o} ||grad f_o(x_i)||^2``.

    Uses VJPs only: one per example and output, vmapped over ``chunk_size`` examples at a time
    (peak memory ~ ``chunk_size * o * P``) and scanned over chunks. Cost: ``n * o`` VJPs.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs`` of shape ``(batch, o)`` (or ``(batch,)``).
      params: parameters.
      x: inputs, leading axis ``n``.
      chunk_size: examples per vmapped chunk, in [1, n]; default ``min(n, 16)``.
      normalization: ``"per_example"`` (divide by n, default), ``"per_output"`` (by n o) or
        ``"none"``.

    Raises:
      ValueError: bad ``normalization`` or ``chunk_size``, non-finite ``params`` or ``x``.
        Called eagerly, also when the trace comes out NaN or inf (under ``jit`` it is NaN).
    """
    _scale(normalization, 1, 1)  # validate before any work
    tu.check_finite(params, "params")
    tu.check_finite(x, "x")
    n = num_examples(x, "x")
    chunk_size = min(n, 16) if chunk_size is None else check_int(chunk_size, "chunk_size", 1, n)
    out_shape = jax.eval_shape(lambda p: apply_fn(p, jax.tree.map(lambda a: a[:1], x)), params)
    o = math.prod(out_shape.shape[1:]) if len(out_shape.shape) > 1 else 1
    scale = _scale(normalization, n, o)

    def per_example(xi):
        f = lambda p: jnp.reshape(apply_fn(p, jax.tree.map(lambda a: a[None], xi)), (o,))  # noqa: E731
        _, vjp_fn = jax.vjp(f, params)
        rows = jax.vmap(lambda e: vjp_fn(e)[0])(jnp.eye(o, dtype=out_shape.dtype))
        return tu.vdot(rows, rows)

    def chunk_sum(xc):
        return jnp.sum(jax.vmap(per_example)(xc))

    num_full, rem = divmod(n, chunk_size)
    head = jax.tree.map(
        lambda a: jnp.reshape(a[: num_full * chunk_size], (num_full, chunk_size, *a.shape[1:])),
        x,
    )
    total = jnp.sum(jax.lax.map(in_loop(chunk_sum), head))  # fast convolutions on CPU
    if rem:
        total = total + chunk_sum(jax.tree.map(lambda a: a[num_full * chunk_size :], x))
    total = total * scale
    finite = jnp.isfinite(total)
    if check_finite_products(finite, lambda: "ntk_trace", name="apply_fn"):
        total = nan_unless(finite, total)  # inf as well: not a number we can stand behind
    return total


def ntk_top_eig(
    apply_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    x: Any,
    v0: jax.Array | None = None,
    /,
    *,
    k: int = 1,
    num_iters: int = 20,
    normalization: Normalization = "per_example",
) -> EigResult:
    """Return the top-``k`` eigenpairs of the normalised NTK ``J J^T / n`` by Lanczos.

    Products are VJP-then-JVP in output space (:func:`hessian_lab.ntk`); eigenvectors live in
    output space, shaped like ``apply_fn(params, x)``.

    Args:
      apply_fn, params, x: as in :func:`ntk_trace`.
      v0: start vector shaped like the outputs; default a fixed normal draw (key 0).
      k, num_iters: as in :func:`hessian_lab.top_eigs` (``num_iters <= n o``).
      normalization: as in :func:`ntk_trace`.

    Raises:
      ValueError: as :func:`ntk_trace` and :func:`hessian_lab.top_eigs` (``k``, ``num_iters``
        against ``n o``), before any forward pass.
    """
    _scale(normalization, 1, 1)
    tu.check_finite(x, "x")
    out = jax.eval_shape(lambda p: apply_fn(p, x), params)
    check_k_iters(k, num_iters, math.prod(out.shape))
    op = ntk(apply_fn, params, x)
    shape = op.like.shape
    n = shape[0]
    o = math.prod(shape[1:]) if len(shape) > 1 else 1
    scale = _scale(normalization, n, o)
    if v0 is None:
        v0 = jax.random.normal(jax.random.key(0), shape, op.like.dtype)
    scaled = Operator(lambda u: scale * op(u), op.like, "ntk")
    try:
        return top_eigs(scaled, v0, k=k, num_iters=num_iters)
    except NonFiniteError as e:  # the user passed apply_fn, not a matvec: name what they passed
        raise NonFiniteError(str(e).replace("matvec:", "apply_fn:", 1)) from None
