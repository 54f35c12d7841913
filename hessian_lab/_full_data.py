"""Full-data curvature operators, accumulated over chunks of a dataset in one scan.

The Hessian of the mean loss over ``n`` examples split into chunks ``C_j`` of sizes ``n_j`` is

    H = sum_j (n_j / n) H_j,      H_j = Hessian of the mean loss over chunk j,

so weighting each chunk's product by its size gives exactly the full-data Hessian, for an
unequal last chunk too. This is *not* the mean of per-batch top eigenvalues: by convexity of
lambda_max that average is biased upward. Chunks are read with ``dynamic_slice`` inside a
``lax.scan``, so the peak temporary memory is set by ``chunk_size``, not by ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import tree as tu
from ._conv_layout import in_loop
from ._matvec import check_bool
from ._operators import Operator, all_finite, ggn, hvp, poison, shape_struct
from ._stateful import check_chunking

__all__ = ["chunked_mean", "chunked_operator", "full_data_ggn", "full_data_hvp", "num_examples"]

PyTree = Any


def num_examples(data: PyTree, name: str = "data") -> int:
    """Return the common leading dimension of every leaf of ``data``; raise if they differ."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError(f"{name}: must hold at least one array")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(
            f"{name}: every array must share the leading (example) axis, got shapes {shapes}"
        )
    return int(sizes.pop())


def _example_shards(data: PyTree) -> tuple[int, str]:
    """Devices the example axis of ``data`` is split over in its *type* (Explicit mesh axes).

    Returns ``(d, axis names)``; ``(1, "")`` for unsharded data or Auto/Manual sharding, where
    slicing chunks is unconstrained.
    """
    for leaf in jax.tree.leaves(data):
        try:
            sharding = jax.typeof(leaf).sharding
            first = sharding.spec[0] if len(sharding.spec) else None
        except (AttributeError, TypeError):  # not an array type JAX can describe
            continue
        if first is None:
            continue
        axes = first if isinstance(first, tuple) else (first,)
        return math.prod(sharding.mesh.shape[a] for a in axes), ", ".join(map(str, axes))
    return 1, ""


def _check_chunk_size(chunk_size: Any, n: int, data: PyTree = None) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(f"chunk_size: must be an int in [1, n={n}], got {chunk_size!r}")
    if not 1 <= chunk_size <= n:
        raise ValueError(
            f"chunk_size: must be in [1, n={n}] (number of examples), got {chunk_size}"
        )
    d, axes = _example_shards(data)
    if d > 1 and (chunk_size % d or (n % chunk_size) % d):
        raise ValueError(
            f"chunk_size: {chunk_size} examples per chunk (n={n}) cannot be sliced from data "
            f"whose example axis is split across {d} devices (Explicit mesh axes {axes}). Use "
            "hessian_lab.sharded_full_data_hvp, which scans each device's examples locally "
            f"(docs/scaling.md); or chunks of a multiple of {d} examples, with a loss that "
            "names the output sharding of its contractions over the example axis."
        )
    return chunk_size


def chunked_mean(
    fn: Callable[[PyTree], PyTree], data: PyTree, *, chunk_size: int, like: PyTree
) -> PyTree:
    """Return ``sum_j (n_j / n) fn(C_j)`` over the chunks ``C_j`` of ``data``, in one scan.

    ``fn(chunk)`` must return a pytree shaped like ``like``; chunks are read with
    ``dynamic_slice``, the last one holds the remainder ``n mod chunk_size``. ``fn`` is traced
    once per chunk shape, with its convolutions in the layout XLA:CPU runs fast inside a loop
    (:func:`hessian_lab._conv_layout.in_loop`). Validates nothing: callers check ``data`` and ``chunk_size``
    first (:func:`num_examples`).
    """
    n = num_examples(data)
    c = chunk_size
    num_full, rem = divmod(n, c)
    if num_full == 1 and not rem:
        return fn(data)
    per_chunk = in_loop(fn)

    def body(acc, i):
        chunk = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * c, c), data)
        return tu.axpy(c / n, per_chunk(chunk), acc), None

    acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)
    acc, _ = jax.lax.scan(body, acc, jnp.arange(num_full))
    if rem:
        tail = jax.tree.map(lambda x: x[num_full * c :], data)
        acc = tu.axpy(rem / n, fn(tail), acc)
    return acc


def chunked_operator(
    make_matvec: Callable[[PyTree], Callable[[PyTree], PyTree]],
    like: PyTree,
    data: PyTree,
    *,
    chunk_size: int,
    name: str = "full_data",
) -> Operator:
    """Sum per-chunk products weighted by chunk size / n, over the whole of ``data``.

    Args:
      make_matvec: ``chunk -> (v -> A_chunk v)``, where ``A_chunk`` is the operator of the
        *mean* loss over the chunk.
      like: shape skeleton of the operator's input vectors.
      data: pytree of arrays with a shared leading axis of ``n`` examples.
      chunk_size: examples per chunk; the last chunk holds the remainder ``n mod chunk_size``.

    Raises:
      ValueError: ``data`` leaves disagree in length, or ``chunk_size`` is not in [1, n].
    """
    c = _check_chunk_size(chunk_size, num_examples(data), data)

    def matvec(v: PyTree) -> PyTree:
        return chunked_mean(lambda chunk: make_matvec(chunk)(v), data, chunk_size=c, like=v)

    return Operator(matvec, like, name)


def full_data_hvp(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    chunk_size: int,
    linearize: bool = False,
) -> Operator:
    """Return ``v -> H v`` for the Hessian of the mean of ``loss_fn`` over the whole dataset.

    Two ways to pay for the products:

    - ``linearize=False`` (default): every product is forward-over-reverse over every chunk,
      recomputing the forward pass. Memory is set by ``chunk_size`` alone (constant in ``n``).
    - ``linearize=True``: the full-data gradient is linearised once, when the operator is built
      (``jax.linearize``: one forward and backward pass over all chunks), and every product
      then evaluates only the stored linear map. Cheaper per product (about a third less work
      for an MLP), but the residuals of *all* chunks stay in memory, growing with ``n`` like
      one full-batch backward graph (what PyHessian keeps). Worth it when many products are
      taken at the same params (Lanczos, SLQ) and the activations fit. Inside ``jit`` the
      linearisation runs once per call, before the estimator's loop.

    Args:
      loss_fn: ``loss_fn(params, batch) -> mean loss over the batch``.
      params: the point at which the Hessian is taken.
      data: the dataset, any pytree of arrays with a leading axis of ``n`` examples (e.g.
        ``(x, y)``); chunks of it are passed to ``loss_fn`` as ``batch``.
      chunk_size: examples per chunk (memory knob); the result does not depend on it, except
        for a train-mode BatchNorm loss (:func:`hessian_lab.curvature_loss`), whose statistics
        are those of the chunk: ``chunk_size < n`` is then refused unless it opted in.
      linearize: linearise the gradient once and reuse it for every product (see above).

    Products are NaN wherever the loss or its gradient at ``params`` is NaN or inf (a NaN label
    under MSE leaves the Hessian ``X^T X`` finite, but the point is not a number), so the
    estimators raise or flag it rather than report a finite sharpness.

    Raises:
      ValueError: non-finite ``params``, mismatched leading axes, ``chunk_size`` outside [1, n]
        (or below n for a train-mode BatchNorm loss without ``per_chunk``), ``linearize`` not
        a bool.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)
      >>> x, y = jnp.eye(3), jnp.zeros(3)
      >>> full_data_hvp(loss, jnp.zeros(3), (x, y), chunk_size=2)(jnp.ones(3)).tolist()
      [0.333..., 0.333..., 0.333...]
    """
    tu.check_finite(params, "params")
    check_bool(linearize, "linearize")
    n = num_examples(data)
    check_chunking(loss_fn, _check_chunk_size(chunk_size, n, data), n)
    like = shape_struct(params)
    if not linearize:
        return chunked_operator(
            lambda chunk: hvp(loss_fn, params, chunk),
            like,
            data,
            chunk_size=chunk_size,
            name="full_data_hvp",
        )
    c = chunk_size
    value_and_grad = jax.value_and_grad(loss_fn)
    dtype = jnp.result_type(*jax.tree.leaves(params))
    like_vg = (jax.ShapeDtypeStruct((), dtype), like)

    def chunk_value_and_grad(p: PyTree, chunk: PyTree) -> tuple:
        loss, g = value_and_grad(p, chunk)
        return jnp.asarray(loss, dtype), g

    def full_value_and_grad(p: PyTree) -> tuple:
        return chunked_mean(
            lambda chunk: chunk_value_and_grad(p, chunk), data, chunk_size=c, like=like_vg
        )

    (loss, g), lin = jax.linearize(full_value_and_grad, params)
    ok = jnp.isfinite(loss) & all_finite(g)
    return Operator(lambda v: poison(lin(v)[1], ok), like, "full_data_hvp")


def full_data_ggn(
    apply_fn: Callable[[PyTree, Any], jax.Array],
    output_loss: Callable[[jax.Array, Any], jax.Array],
    params: PyTree,
    x: Any,
    y: Any,
    *,
    chunk_size: int,
) -> Operator:
    """Return ``v -> G v`` for the GGN of the mean loss over the dataset ``(x, y)``, in chunks.

    ``output_loss(outputs, y)`` must be the *mean* over the examples of a chunk. See
    :func:`hessian_lab.ggn` for the product and :func:`full_data_hvp` for the weighting.
    """
    tu.check_finite(params, "params")
    return chunked_operator(
        lambda chunk: ggn(apply_fn, output_loss, params, chunk[0], chunk[1]),
        shape_struct(params),
        (x, y),
        chunk_size=chunk_size,
        name="full_data_ggn",
    )
