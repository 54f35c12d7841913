"""The dense boundary: turn a pytree matvec (or a dense matrix) into a flat-vector problem.

Estimators accept either a callable ``v -> A v`` on pytrees or a dense symmetric 2-D array. Both
become ``flat_mv: (D,) -> (D,)`` plus ``unravel`` here, after eager checks of the start vector.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import tree as tu
from ._operators import Operator

PyTree = Any


class FlatProblem(NamedTuple):
    """A linear operator on flat vectors, with the map back to pytrees."""

    mv: Callable[[jax.Array], jax.Array]
    dim: int
    dtype: Any
    ravel: Callable[[PyTree], jax.Array]
    unravel: Callable[[jax.Array], PyTree]


def is_dense(matvec: Any) -> bool:
    """True if ``matvec`` is a matrix (numpy or jax array) rather than a callable."""
    return not callable(matvec) and hasattr(matvec, "shape") and hasattr(matvec, "dtype")


def flat_problem(matvec: Any, like: PyTree, *, name: str = "v0") -> FlatProblem:
    """Build the flat operator for ``matvec`` acting on vectors shaped like ``like``.

    Args:
      matvec: callable on pytrees, or a dense square 2-D array.
      like: a vector (pytree) the operator acts on, or for a dense matrix a 1-D array.
      name: the argument name used in error messages.

    Raises:
      ValueError: ``matvec`` is neither callable nor a square 2-D array; ``like`` does not match
        the operator's input (structure, shapes, or length); ``like`` holds NaN or inf.
    """
    if is_dense(matvec):
        if jnp.ndim(matvec) != 2 or jnp.shape(matvec)[0] != jnp.shape(matvec)[1]:
            raise ValueError(
                f"matvec: a dense operator must be a square 2-D array, got shape "
                f"{jnp.shape(matvec)}"
            )
        d = jnp.shape(matvec)[0]
        if jnp.ndim(like) != 1 or jnp.shape(like)[0] != d:
            raise ValueError(
                f"{name}: with a dense ({d}, {d}) matrix, must be a 1-D array of length {d}, got "
                f"shape {jnp.shape(like)}"
            )
        tu.check_finite(like, name)
        A = jnp.asarray(matvec)
        dtype = jnp.result_type(A, like)
        return FlatProblem(
            lambda x: A.astype(dtype) @ x, d, dtype, lambda v: jnp.asarray(v, dtype), lambda x: x
        )
    if not callable(matvec):
        raise ValueError(
            f"matvec: must be a callable v -> A v or a square 2-D array, got {type(matvec)}"
        )
    if isinstance(matvec, Operator):
        tu.check_same_structure(matvec.like, like, (f"the {matvec.name} operator's input", name))
    tu.check_finite(like, name)
    flat, unravel = tu.ravel(like)
    dtype = flat.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name}: must hold floating-point arrays, got dtype {dtype}")

    def mv(x: jax.Array) -> jax.Array:
        return tu.to_flat(matvec(unravel(x))).astype(dtype)

    return FlatProblem(mv, int(flat.shape[0]), dtype, tu.to_flat, unravel)


def like_for(matvec: Any, like: Any) -> Any:
    """For a dense matrix, ``like`` may be the dimension ``D``; return a vector to shape probes."""
    if isinstance(like, int):
        return jnp.zeros((like,), jnp.result_type(matvec))
    return like


def check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    """Raise ValueError unless ``value`` is an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name}: must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: must be in {bounds}, got {value}")
    return int(value)


def check_k_iters(k: Any, num_iters: Any, dim: int) -> tuple[int, int]:
    """Validate a Krylov budget: 1 <= k <= num_iters <= dim."""
    check_int(k, "k", 1)
    if k > dim:
        raise ValueError(f"k: must be at most the operator's dimension {dim}, got {k}")
    check_int(num_iters, "num_iters", 1)
    if num_iters < k:
        raise ValueError(f"num_iters: must be at least k={k}, got {num_iters}")
    if num_iters > dim:
        raise ValueError(
            f"num_iters: must be at most the operator's dimension {dim} (a Krylov basis cannot "
            f"hold more orthonormal vectors), got {num_iters}"
        )
    return int(k), int(num_iters)
