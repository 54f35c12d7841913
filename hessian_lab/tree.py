"""Small pytree algebra: the vector-space operations estimators need on parameter pytrees.

Probe vectors have the structure of ``params``; estimators ravel only at a dense boundary (the
Lanczos basis). Structure checks run eagerly and show both trees in the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

__all__ = [
    "add",
    "axpy",
    "check_finite",
    "check_same_structure",
    "is_concrete",
    "norm",
    "normalize",
    "random_like",
    "ravel",
    "scale",
    "sub",
    "to_flat",
    "vdot",
    "zeros_like",
]

PyTree = Any


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Return the Euclidean inner product sum_leaves <a, b> of two pytrees of the same structure."""
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y), a, b))
    return sum(leaves[1:], start=leaves[0]) if leaves else jnp.zeros(())


def add(a: PyTree, b: PyTree) -> PyTree:
    """Return a + b, leafwise."""
    return jax.tree.map(jnp.add, a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
    """Return a - b, leafwise."""
    return jax.tree.map(jnp.subtract, a, b)


def scale(a: PyTree, s: jax.typing.ArrayLike) -> PyTree:
    """Return s * a for a scalar s."""
    return jax.tree.map(lambda x: (s * x).astype(x.dtype), a)


def axpy(alpha: jax.typing.ArrayLike, x: PyTree, y: PyTree) -> PyTree:
    """Return alpha * x + y."""
    return jax.tree.map(lambda u, v: (alpha * u + v).astype(v.dtype), x, y)


def norm(a: PyTree) -> jax.Array:
    """Return the Euclidean norm of a pytree."""
    return jnp.sqrt(vdot(a, a))


def normalize(a: PyTree) -> PyTree:
    """Return a / ||a||."""
    return scale(a, 1.0 / norm(a))


def zeros_like(a: PyTree) -> PyTree:
    """Return a pytree of zeros with the structure, shapes and dtypes of ``a``."""
    return jax.tree.map(jnp.zeros_like, a)


def random_like(
    key: jax.Array, tree: PyTree, kind: Literal["normal", "rademacher"] = "normal"
) -> PyTree:
    """Draw a random pytree shaped like ``tree``: standard normal or Rademacher (+-1) entries."""
    if kind not in ("normal", "rademacher"):
        raise ValueError(f"kind: must be 'normal' or 'rademacher', got {kind!r}")
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    draw: Callable = (
        (lambda k, x: jax.random.normal(k, jnp.shape(x), jnp.result_type(x)))
        if kind == "normal"
        else (lambda k, x: jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)))
    )
    return jax.tree.unflatten(treedef, [draw(k, x) for k, x in zip(keys, leaves, strict=False)])


def ravel(tree: PyTree) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """Flatten a pytree to one 1-D array; return ``(flat, unravel)``.

    ``flat`` is ``jax.flatten_util.ravel_pytree``'s (leaves concatenated in tree order, promoted
    to a common dtype). ``unravel`` maps an array whose last axis has that length back to the
    tree, each leaf in its own shape and dtype; leading axes are kept (a ``(k, D)`` array gives
    leaves of shape ``(k, *leaf_shape)``), and it works under ``jax.vmap``.
    """
    flat, _ = ravel_pytree(tree)
    leaves, treedef = jax.tree.flatten(tree)
    shapes = [tuple(jnp.shape(x)) for x in leaves]
    dtypes = [jnp.result_type(x) for x in leaves]
    ends = np.cumsum([math.prod(shape) for shape in shapes]).tolist()
    total = int(flat.shape[0])

    def unravel(x: jax.Array) -> PyTree:
        if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != total:
            raise ValueError(
                f"unravel: expected an array whose last axis has length {total}, got shape "
                f"{jnp.shape(x)}"
            )
        x = jnp.asarray(x)
        lead = x.shape[:-1]
        out = [
            x[..., end - math.prod(shape) : end].reshape(lead + shape).astype(dt)
            for end, shape, dt in zip(ends, shapes, dtypes, strict=True)
        ]
        return jax.tree.unflatten(treedef, out)

    return flat, unravel


def to_flat(tree: PyTree) -> jax.Array:
    """The ``flat`` half of :func:`ravel`, without building an ``unravel``."""
    return ravel_pytree(tree)[0]


def check_same_structure(a: PyTree, b: PyTree, names: tuple[str, str] = ("a", "b")) -> None:
    """Raise ValueError if two pytrees differ in structure or leaf shapes; show both trees."""
    sa, sb = jax.tree.structure(a), jax.tree.structure(b)
    if sa != sb:
        raise ValueError(
            f"{names[1]}: pytree structure must match {names[0]}.\n"
            f"  {names[0]}: {sa}\n  {names[1]}: {sb}"
        )
    shapes_a = [jnp.shape(x) for x in jax.tree.leaves(a)]
    shapes_b = [jnp.shape(x) for x in jax.tree.leaves(b)]
    if shapes_a != shapes_b:
        raise ValueError(
            f"{names[1]}: leaf shapes must match {names[0]}.\n"
            f"  {names[0]}: {shapes_a}\n  {names[1]}: {shapes_b}"
        )


def is_concrete(tree: PyTree) -> bool:
    """True when no leaf is a tracer, so values can be inspected on the host."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def check_finite(tree: PyTree, name: str) -> None:
    """Raise ValueError if a concrete pytree holds NaN or inf; a no-op under tracing."""
    if not is_concrete(tree):
        return
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        arr = np.asarray(leaf)
        if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            where = jax.tree_util.keystr(path) or "(root)"
            raise ValueError(f"{name}: must be finite, but leaf {where} holds NaN or inf")
