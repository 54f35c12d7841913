"""Data-parallel full-data curvature operators over a device mesh, and memory-based chunk sizes.

Each device along the mesh axis ``axis`` holds ``m = n // d`` examples (``d`` devices) and
computes the product of the Hessian (or GGN) of the mean loss over its shard, chunk by chunk, as
:func:`hessian_lab.full_data_hvp` does on one device. The shards' products are summed with
``psum`` and weighted by ``m / n``; the ``r = n mod d`` examples left over are processed on
every device (the same few examples, so no communication) with weight ``r / n``:

    H = sum_devices (m / n) H_device + (r / n) H_rest,

which is exactly the Hessian of the mean loss over all ``n`` examples. The result is replicated
on every device, so every estimator (``top_eigs``, ``trace``, ``spectral_density``, ...) runs
unchanged on it; only the products are distributed. See docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from . import tree as tu
from ._full_data import chunked_operator, num_examples
from ._operators import Operator, all_finite, ggn, hvp, poison, shape_struct
from ._stateful import check_chunking

__all__ = [
    "chunk_size_for_memory",
    "shard_data",
    "sharded_full_data_ggn",
    "sharded_full_data_hvp",
]

PyTree = Any


def _axis_size(mesh: Any, axis: Any) -> int:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh: must be a jax.sharding.Mesh, got {type(mesh)}")
    if axis not in mesh.axis_names:
        raise ValueError(f"axis: must be one of the mesh axes {mesh.axis_names}, got {axis!r}")
    return int(mesh.shape[axis])


def _split(n: int, d: int, chunk_size: Any) -> tuple[int, int]:
    """Validate and return (examples per device, examples left over)."""
    m, r = divmod(n, d)
    if m == 0:
        raise ValueError(
            f"data: needs at least one example per device along the mesh axis ({d} devices), "
            f"got n={n}"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(
            f"chunk_size: must be an int in [1, n // devices = {m}], got {chunk_size!r}"
        )
    if not 1 <= chunk_size <= m:
        raise ValueError(
            f"chunk_size: counts examples per device and must be in [1, n // devices = {m}] "
            f"(n={n}, {d} devices), got {chunk_size}"
        )
    return m, r


def _place(tree: PyTree, mesh: Mesh, spec: P) -> PyTree:
    """Lay ``tree`` out as ``spec`` on ``mesh``: ``reshard`` for Explicit axes (jax.make_mesh's
    default), a sharding constraint for Auto ones."""
    sharding = NamedSharding(mesh, spec)
    if AxisType.Explicit in tuple(mesh.axis_types):
        return jax.sharding.reshard(tree, sharding)
    return jax.lax.with_sharding_constraint(tree, sharding)


def sharded_operator(
    make_matvec: Callable[[PyTree], Callable[[PyTree], PyTree]],
    params: PyTree,
    data: PyTree,
    *,
    mesh: Mesh,
    axis: Any = "data",
    chunk_size: int,
    name: str = "sharded_full_data",
) -> Operator:
    """Sum per-chunk products over a dataset split across the devices of ``mesh[axis]``.

    Args:
      make_matvec: ``(params, chunk) -> (v -> A_chunk v)`` with ``A_chunk`` the operator of the
        *mean* loss over the chunk.
      params: the linearisation point (replicated on every device).
      data: pytree of arrays with a shared leading axis of ``n`` examples.
      mesh: the device mesh; other mesh axes than ``axis`` see replicated data.
      axis: the mesh axis the examples are split over.
      chunk_size: examples per chunk *on each device*, in ``[1, n // devices]``.

    Raises:
      ValueError: ``mesh`` is not a Mesh, ``axis`` not one of its axes, fewer examples than
        devices, or ``chunk_size`` out of range.
    """
    d = _axis_size(mesh, axis)
    n = num_examples(data)
    m, r = _split(n, d, chunk_size)
    like = shape_struct(params)

    def local(p, shard, v):
        op = chunked_operator(
            lambda chunk: make_matvec(p, chunk), like, shard, chunk_size=chunk_size
        )
        return jax.lax.psum(tu.scale(op(v), m / n), axis)

    # check_vma=False: the chunk scan's accumulator starts replicated and becomes per-device, a
    # change the varying-axes checker rejects; the psum makes the output replicated, as stated.
    # jit: an eager product then runs compiled rather than primitive by primitive (under an
    # outer jit this is inlined).
    summed = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=(P(), P(axis), P()), out_specs=P(), check_vma=False
        )
    )

    def product(v: PyTree) -> PyTree:
        main = _place(jax.tree.map(lambda x: x[: n - r], data), mesh, P(axis))
        out = summed(_place(params, mesh, P()), main, _place(v, mesh, P()))
        if r:
            rest = jax.tree.map(lambda x: x[n - r :], data)
            out = tu.axpy(r / n, make_matvec(params, rest)(v), out)
        return out

    return Operator(product, like, name)


def sharded_full_data_hvp(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    mesh: Mesh,
    axis: Any = "data",
    chunk_size: int,
    linearize: bool = False,
) -> Operator:
    """Return ``v -> H v`` for the Hessian of the mean loss over ``data``, data-parallel.

    The same operator as :func:`hessian_lab.full_data_hvp` (equal to float rounding), with the
    examples split over the ``d`` devices of ``mesh.shape[axis]``: each device scans its
    ``n // d`` examples in chunks of ``chunk_size`` and the products are summed with ``psum``;
    the ``n mod d`` remaining examples are processed on every device. Cost per product: one
    chunked HVP over ``n / d`` examples per device plus an all-reduce of ``P`` numbers. Place
    ``data`` with :func:`shard_data` first so a product moves no examples between devices.

    Args:
      loss_fn: ``loss_fn(params, batch) -> mean loss over the batch``.
      params: the point at which the Hessian is taken (replicated).
      data: pytree of arrays with a leading axis of ``n`` examples.
      mesh: a ``jax.sharding.Mesh``; ``axis`` names the data-parallel axis.
      axis: mesh axis name the examples are split over (default ``"data"``).
      chunk_size: examples per chunk on each device (the per-device memory knob), in
        ``[1, n // d]``; see :func:`chunk_size_for_memory`.
      linearize: as in :func:`hessian_lab.full_data_hvp`: linearise the data-parallel
        full-data gradient once and reuse it for every product (each device keeps the
        activations of its own examples).

    Raises:
      ValueError: non-finite ``params``, a bad ``mesh`` or ``axis``, ``n < d``,
        ``chunk_size`` outside ``[1, n // d]``, or ``linearize`` not a bool.

    Example:
      >>> import jax, jax.numpy as jnp, hessian_lab as hl
      >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
      >>> loss = lambda p, b: 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)
      >>> x, y = jnp.diag(jnp.arange(1.0, 5.0)), jnp.zeros(4)
      >>> H = hl.sharded_full_data_hvp(loss, jnp.zeros(4), (x, y), mesh=mesh, chunk_size=1)
      >>> round(float(hl.top_eigs(H, jnp.ones(4), k=1, num_iters=4).values[0]), 4)
      4.0
    """
    tu.check_finite(params, "params")
    if not isinstance(linearize, bool):
        raise ValueError(f"linearize: must be True or False, got {linearize!r}")
    # a train-mode BatchNorm loss would be normalised per device: refused unless per_chunk
    n = num_examples(data)
    check_chunking(loss_fn, n // _axis_size(mesh, axis), n)
    if not linearize:
        return sharded_operator(
            lambda p, chunk: hvp(loss_fn, p, chunk),
            params,
            data,
            mesh=mesh,
            axis=axis,
            chunk_size=chunk_size,
            name="sharded_full_data_hvp",
        )
    grad = jax.grad(loss_fn)

    def full_grad(p: PyTree) -> PyTree:
        # The data-parallel mean gradient, as a "product" that ignores its vector: the same
        # split, chunk scan, psum and remainder as the recomputing operator.
        op = sharded_operator(
            lambda q, chunk: lambda _: grad(q, chunk),
            p,
            data,
            mesh=mesh,
            axis=axis,
            chunk_size=chunk_size,
        )
        return op(p)

    g, lin = jax.linearize(full_grad, params)
    ok = all_finite(g)  # a non-finite gradient makes every product NaN, as in full_data_hvp
    return Operator(lambda v: poison(lin(v), ok), shape_struct(params), "sharded_full_data_hvp")


def sharded_full_data_ggn(
    apply_fn: Callable[[PyTree, Any], jax.Array],
    output_loss: Callable[[jax.Array, Any], jax.Array],
    params: PyTree,
    x: Any,
    y: Any,
    *,
    mesh: Mesh,
    axis: Any = "data",
    chunk_size: int,
) -> Operator:
    """Return ``v -> G v`` for the GGN of the mean loss over ``(x, y)``, data-parallel.

    The data-parallel :func:`hessian_lab.full_data_ggn`; arguments and errors as in
    :func:`sharded_full_data_hvp`.
    """
    tu.check_finite(params, "params")
    return sharded_operator(
        lambda p, chunk: ggn(apply_fn, output_loss, p, chunk[0], chunk[1]),
        params,
        (x, y),
        mesh=mesh,
        axis=axis,
        chunk_size=chunk_size,
        name="sharded_full_data_ggn",
    )


def shard_data(data: PyTree, mesh: Mesh, axis: Any = "data") -> PyTree:
    """Place ``data`` on ``mesh``: the first ``d * (n // d)`` examples split along ``axis``.

    Returns a pytree like ``data`` whose leaves are split over the devices of ``mesh[axis]``
    when ``n`` is divisible by ``d``; otherwise the leaves are replicated (the operators slice
    the divisible part off inside the product; pass ``n`` divisible by ``d`` to avoid moving
    examples). Single-process only: on several hosts, build the global arrays with
    ``jax.make_array_from_process_local_data`` (docs/scaling.md).

    Raises:
      ValueError: a bad ``mesh`` or ``axis``, or leaves that disagree in length.
    """
    d = _axis_size(mesh, axis)
    n = num_examples(data)
    spec = P(axis) if n % d == 0 else P()
    return jax.device_put(data, NamedSharding(mesh, spec))


def _hvp_temp_bytes(loss_fn, params, data, c: int) -> int:
    chunk = jax.tree.map(lambda x: jax.ShapeDtypeStruct((c, *x.shape[1:]), x.dtype), data)
    like = shape_struct(params)
    lowered = jax.jit(lambda p, b, v: hvp(loss_fn, p, b)(v)).lower(like, chunk, like)
    stats = lowered.compile().memory_analysis()
    if stats is None:
        raise ValueError(
            f"budget_bytes: the {jax.default_backend()} backend reports no memory analysis; "
            "choose chunk_size by hand"
        )
    return int(stats.temp_size_in_bytes)


def chunk_size_for_memory(
    budget_bytes: int,
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    data: PyTree,
    /,
    *,
    num_devices: int = 1,
    trial_size: int = 32,
) -> int:
    """Return the largest chunk size whose HVP temporaries fit in ``budget_bytes`` (per device).

    XLA's own accounting, not a guess: the per-chunk HVP is compiled (never run) at
    ``trial_size`` and ``2 * trial_size`` examples, ``memory_analysis().temp_size_in_bytes`` of
    each gives the fixed and per-example temporary bytes, and the chunk size solving
    ``fixed + per_example * c <= budget_bytes`` is checked by one more compile (and halved
    until it fits). ``temp_size_in_bytes`` excludes the arguments: the budget is what is left
    per device after the data shard, the parameters and the estimator's own state (the Lanczos
    basis is ``num_iters x P`` numbers; see docs/scaling.md). The full-data operators add the
    accumulator and a chunk copy (``2 P`` numbers plus one chunk) on top.

    Args:
      budget_bytes: bytes available for one product's temporaries on each device.
      loss_fn: ``loss_fn(params, batch) -> mean loss``, as for the operators.
      params: parameters (arrays or ``ShapeDtypeStruct``s).
      data: the dataset (arrays or ``ShapeDtypeStruct``s) with a leading axis of ``n``.
      num_devices: devices the data is split over; the result is at most ``n // num_devices``.
      trial_size: examples in the first trial compile.

    Returns:
      a chunk size in ``[1, n // num_devices]``.

    Raises:
      ValueError: a non-positive budget, ``num_devices`` < 1 or more than ``n``, or a budget
        too small for even one example.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, b: 0.5 * jnp.mean((jnp.tanh(b[0] @ p) - b[1]) ** 2)
      >>> data = (jnp.ones((1000, 8)), jnp.ones(1000))
      >>> 1 <= chunk_size_for_memory(2**20, loss, jnp.ones(8), data) <= 1000
      True
    """
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes: must be a positive int, got {budget_bytes!r}")
    n = num_examples(data)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int):
        raise ValueError(f"num_devices: must be an int in [1, n={n}], got {num_devices!r}")
    if not 1 <= num_devices <= n:
        raise ValueError(f"num_devices: must be in [1, n={n}], got {num_devices}")
    if isinstance(trial_size, bool) or not isinstance(trial_size, int) or trial_size < 1:
        raise ValueError(f"trial_size: must be a positive int, got {trial_size!r}")
    n_local = n // num_devices
    c1 = min(trial_size, n_local)
    c2 = min(2 * c1, n_local)
    t1 = _hvp_temp_bytes(loss_fn, params, data, c1)
    if c2 == c1:
        per_example, fixed = t1 / c1, 0.0
    else:
        t2 = _hvp_temp_bytes(loss_fn, params, data, c2)
        per_example = max((t2 - t1) / (c2 - c1), 1.0)
        fixed = max(t1 - per_example * c1, 0.0)
    c = int(min(max((budget_bytes - fixed) // per_example, 1), n_local))
    while True:
        used = _hvp_temp_bytes(loss_fn, params, data, c)
        if used <= budget_bytes:
            return c
        if c == 1:
            raise ValueError(
                f"budget_bytes: {budget_bytes} bytes is too small: one example's HVP needs "
                f"{used} bytes of temporaries"
            )
        c = max(c // 2, 1)


def place(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """``jax.device_put(tree, sharding)``, across processes too.

    With several processes (``jax.distributed``) a mesh spans devices this process cannot
    address, which ``device_put`` refuses; every process holds the whole tree (the same seeds,
    the same data), so each one provides the slices of its own devices.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def leaf(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):  # typed keys
            return jax.random.wrap_key_data(
                leaf(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(leaf, tree)


def fetch(tree: PyTree) -> PyTree:
    """``jax.device_get(tree)``, across processes too: a global array split over processes is
    gathered (``process_allgather``) so that every process gets the whole value."""

    def leaf(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(leaf, tree)
