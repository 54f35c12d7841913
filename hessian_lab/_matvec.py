"""The dense boundary: turn a pytree matvec (or a dense matrix) into a flat-vector problem.

Estimators accept either a callable ``v -> A v`` on pytrees or a dense symmetric 2-D array. Both
become ``flat_mv: (D,) -> (D,)`` plus ``unravel`` here, after eager checks of the start vector
and, for a concrete dense matrix, of its symmetry and finiteness. A callable's output is checked
(tree structure, leaf shapes, real floating dtype) when the flat product is first traced, which
is before any product runs, eagerly or under ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import tree as tu
from ._conv_layout import in_loop
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


# A dense matrix counts as symmetric when max|A - A^T| <= 10 sqrt(eps) max|A| (3.5e-3 in
# float32, 1.5e-7 in float64). Matrices formed in floating point are symmetric only up to
# rounding, and on a GPU float32 matmuls run in TF32 by default: Q diag(lam) Q^T with TF32
# inputs differs from its transpose by 1e-4 to 8e-4 of its largest entry (simulated, D = 50 to
# 500), so a tolerance of a few eps would refuse matrices users build there. Real mistakes (a
# Jacobian, a random or triangular matrix) are asymmetric at order one.
_SYM_FACTOR = 10.0


def _check_dense(A: Any, dtype: Any) -> None:
    """Raise ValueError unless a concrete dense matrix is finite and symmetric (a no-op if traced)."""
    if not tu.is_concrete(A):
        return  # under jit the values are unknown: documented in flat_problem
    with jax.ensure_compile_time_eval():  # a concrete matrix closed over inside jit
        A = jnp.asarray(A, dtype)
        finite = bool(jnp.all(jnp.isfinite(A)))
        scale = float(jnp.max(jnp.abs(A))) if A.size else 0.0
        asym = float(jnp.max(jnp.abs(A - A.T))) if A.size and finite else 0.0
    if not finite:
        raise ValueError("matvec: a dense operator must be finite, but it holds NaN or inf")
    tol = _SYM_FACTOR * float(np.sqrt(jnp.finfo(dtype).eps)) * scale
    if asym > tol:
        raise ValueError(
            f"matvec: a dense operator must be symmetric, max |A - A^T| = {asym:.3g} exceeds "
            f"tol {tol:.3g} (10 sqrt(eps) max|A|); pass (A + A.T) / 2 if the asymmetry is rounding"
        )


def _describe(tree: PyTree) -> str:
    leaves = jax.tree.leaves(tree)
    return f"{jax.tree.structure(tree)} with leaf shapes {[tuple(jnp.shape(x)) for x in leaves]}"


def _check_output(out: PyTree, like: PyTree, name: str) -> None:
    """Raise ValueError unless a matvec's output is a real floating pytree shaped like ``like``."""
    same = jax.tree.structure(out) == jax.tree.structure(like) and [
        jnp.shape(x) for x in jax.tree.leaves(out)
    ] == [jnp.shape(x) for x in jax.tree.leaves(like)]
    if not same:
        raise ValueError(
            f"matvec: must return a pytree with the structure and leaf shapes of {name}.\n"
            f"  {name}: {_describe(like)}\n  matvec returned: {_describe(out)}"
        )
    for leaf in jax.tree.leaves(out):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(
                f"matvec: must return real floating-point arrays, got dtype {jnp.result_type(leaf)}"
            )


def flat_problem(matvec: Any, like: PyTree, *, name: str = "v0") -> FlatProblem:
    """Build the flat operator for ``matvec`` acting on vectors shaped like ``like``.

    A concrete dense matrix is checked here for finiteness and symmetry (relative tolerance
    ``10 sqrt(eps) max|A|`` in the working dtype). A dense matrix that is a tracer (an argument of a
    jitted function) cannot be inspected and is trusted. A callable's output is checked when the
    flat product is first traced, before any product runs.

    Args:
      matvec: callable on pytrees, or a dense square 2-D array.
      like: a vector (pytree) the operator acts on, or for a dense matrix a 1-D array.
      name: the argument name used in error messages.

    Raises:
      ValueError: ``matvec`` is neither callable nor a square 2-D array, is a non-symmetric or
        non-finite dense matrix, or returns a pytree unlike ``like`` or a non-floating dtype;
        ``like`` does not match the operator's input (structure, shapes, or length), is not
        floating point, or holds NaN or inf.
    """
    if is_dense(matvec):
        if jnp.ndim(matvec) != 2 or jnp.shape(matvec)[0] != jnp.shape(matvec)[1]:
            raise ValueError(
                f"matvec: a dense operator must be a square 2-D array, got shape "
                f"{jnp.shape(matvec)}"
            )
        d = jnp.shape(matvec)[0]
        if d == 0:
            raise ValueError("matvec: a dense operator must be at least 1 x 1, got shape (0, 0)")
        like = _as_array(like, name)
        if jnp.ndim(like) != 1 or jnp.shape(like)[0] != d:
            raise ValueError(
                f"{name}: with a dense ({d}, {d}) matrix, must be a 1-D array of length {d}, got "
                f"shape {jnp.shape(like)}"
            )
        dtype = jnp.result_type(matvec, like)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"matvec: a dense operator with {name} must give a real floating-point dtype, got "
                f"{jnp.result_type(matvec)} with {jnp.result_type(like)}"
            )
        dtype = _working(dtype)
        tu.check_finite(like, name)
        _check_dense(matvec, dtype)
        A = jnp.asarray(matvec)
        return FlatProblem(
            lambda x: A.astype(dtype) @ x, d, dtype, lambda v: jnp.asarray(v, dtype), lambda x: x
        )
    if not callable(matvec):
        raise ValueError(
            f"matvec: must be a callable v -> A v or a square 2-D array, got {type(matvec)}"
        )
    if isinstance(matvec, Operator):
        tu.check_same_structure(matvec.like, like, (f"the {matvec.name} operator's input", name))
    for leaf in jax.tree.leaves(like):
        _as_array(leaf, name)
    tu.check_finite(like, name)
    flat, unravel = tu.ravel(like)
    if flat.shape[0] == 0:
        raise ValueError(f"{name}: must hold at least one number, got {like!r}")
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(f"{name}: must hold floating-point arrays, got dtype {flat.dtype}")
    dtype = _working(flat.dtype)

    def mv(x: jax.Array) -> jax.Array:
        out = matvec(unravel(x))
        _check_output(out, like, name)  # at trace time: shapes and dtypes are static
        return tu.to_flat(out).astype(dtype)

    # estimators call mv inside loop bodies: keep a CNN's convolutions fast there on CPU (an
    # Operator's own call already does)
    return FlatProblem(
        mv if isinstance(matvec, Operator) else in_loop(mv),
        int(flat.shape[0]),
        dtype,
        lambda t: tu.to_flat(t).astype(dtype),
        unravel,
    )


def _as_array(x: Any, name: str) -> Any:
    """``x`` as an array if it is array-like (a list of numbers is), else a ValueError."""
    arr = x
    if not hasattr(arr, "dtype"):
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError):
            arr = np.asarray(None)
    if not (jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.bool_)):
        raise ValueError(f"{name}: must be an array (or a pytree of arrays), got {x!r:.60}")
    return arr


def _working(dtype: Any) -> Any:
    # Half precision cannot carry a Lanczos basis (and LAPACK has no float16 eigh): work in
    # float32; a callable still sees its own leaf dtypes, unravel casts back.
    return jnp.promote_types(dtype, jnp.float32)


def like_for(matvec: Any, like: Any) -> Any:
    """For a dense matrix, ``like`` may be the dimension ``D``; return a vector to shape probes."""
    if isinstance(like, int | np.integer) and not isinstance(like, bool):
        if not is_dense(matvec):
            raise ValueError(
                f"like: an int dimension is allowed only with a dense matrix; with a callable "
                f"matvec pass a vector shaped like its input, got {like!r}"
            )
        d = jnp.shape(matvec)[0] if jnp.ndim(matvec) >= 1 else None
        if like != d:
            raise ValueError(f"like: must equal the dense matrix's dimension {d}, got {like}")
        return jnp.zeros((int(like),), jnp.result_type(matvec))
    return like


def check_key(key: Any, name: str = "key") -> None:
    """Raise ValueError unless ``key`` is a PRNG key: a scalar typed key or a raw uint32 pair."""
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape == ():
            return
    elif dtype is not None and jnp.issubdtype(dtype, jnp.uint32) and shape == (2,):
        return  # a legacy jax.random.PRNGKey
    got = f"dtype {dtype}, shape {shape}" if dtype is not None else repr(key)
    raise ValueError(f"{name}: must be a PRNG key from jax.random.key(seed), got {got}")


def check_bool(value: Any, name: str) -> bool:
    """Raise ValueError unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be True or False, got {value!r}")
    return value


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


MAX_COUNT = 2**31 - 1  # products are counted in int32 (``num_matvecs``)


class NonFiniteError(ValueError, FloatingPointError):
    """An estimator's products came out NaN or inf (raised eagerly; under ``jit`` a flag).

    A ``ValueError`` (the documented type, naming the operator) and a ``FloatingPointError``: a
    failure of the numbers rather than of an argument, which the CLI reports with exit code 1.
    """


def check_finite_products(
    finite: jax.Array, detail: Callable[[], str], name: str = "matvec"
) -> bool:
    """Eagerly, raise if an estimator's products were not all finite; return True under tracing.

    ``finite`` is the estimator's reduced flag. Called eagerly (a concrete flag) this raises
    ``ValueError("<name>: produced NaN or inf (<detail>) ...")`` and returns False otherwise; under
    ``jit``/``vmap`` it returns True, and the caller masks its outputs with NaN where the flag is
    False (masking only then keeps ``jax.debug_nans`` quiet on the eager path).
    """
    if not tu.is_concrete(finite):
        return True
    if not bool(finite):
        raise NonFiniteError(
            f"{name}: produced NaN or inf ({detail()}); check that the operator and its inputs "
            "(params, data) are finite"
        )
    return False


def nan_unless(ok: jax.Array, x: jax.Array) -> jax.Array:
    """``x`` where ``ok``, else NaN. Written ``x + sqrt(0 or -1)`` so that no NaN is ever formed
    when ``ok``: under ``vmap`` without ``jit`` both sides of a ``where`` are computed, and a NaN
    constant would trip ``jax.debug_nans``."""
    return x + jnp.sqrt(jnp.where(ok, 0.0, -1.0)).astype(x.dtype)
