"""Lanczos with full reorthogonalisation: top-k and bottom-k eigenpairs by algebraic value.

Each step orthogonalises the new vector against the whole basis twice, as a blocked
``w - Q^T (Q w)`` (classical Gram-Schmidt, "twice is enough"), which keeps the basis orthonormal
to working precision and so produces no ghost (spurious duplicate) eigenvalues. The basis costs
``num_iters x D`` memory; each step costs one matvec plus ``4 num_iters D`` flops (the basis is read
four times).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ._matvec import check_k_iters, flat_problem

__all__ = ["EigResult", "bottom_eigs", "top_eigs", "tridiagonalize"]

PyTree = Any


class EigResult(NamedTuple):
    """Eigenpairs from an iterative solver.

    Attributes:
      values: ``(k,)`` eigenvalues; descending for top-k, ascending for bottom-k.
      vectors: eigenvectors, a pytree like the start vector with a leading axis of size ``k``
        (for a dense matrix, a ``(k, D)`` array). Unit norm, sign arbitrary.
      residuals: ``(k,)`` residual norms ``||A y - lambda y||``; for Lanczos the standard
        estimate ``|beta_m s_{m,j}|``, which is exact in exact arithmetic.
      num_matvecs: number of operator products used.
    """

    values: jax.Array
    vectors: PyTree
    residuals: jax.Array
    num_matvecs: jax.Array


class Tridiagonal(NamedTuple):
    """A Lanczos decomposition ``A Q^T ~ Q^T T``: basis rows ``Q``, diagonal and off-diagonal."""

    basis: jax.Array  # (m, D), orthonormal rows
    alphas: jax.Array  # (m,)
    betas: jax.Array  # (m,), betas[m-1] couples to the next (unused) basis vector


def _restart_vector(i, dim: int, dtype) -> jax.Array:
    # A fixed, generic direction for restart i: cos(k (i + phi)), k = 0..dim-1 (phi the golden
    # ratio). Not jax.random: drawing it with jax.random added ~310 ms (40%) to every Lanczos
    # compile on CPU (760-800 vs 450-500 ms for a jitted 20-step top_eigs on a 200 x 200 matrix,
    # jax 0.10.2, idle 2-core machine), and the test suite compiles Lanczos about a hundred times.
    return jnp.cos(jnp.arange(dim, dtype=dtype) * (i + 1.618033988749895))


def tridiagonalize(mv, x0: jax.Array, num_iters: int) -> Tridiagonal:
    """Run ``num_iters`` Lanczos steps with full reorthogonalisation from ``x0`` (flat vectors).

    On breakdown (an invariant Krylov subspace: the new vector vanishes against the basis),
    continue from a fresh vector orthogonal to the basis with beta = 0, so the requested number of
    Ritz values always comes out. The fresh vectors are fixed (:func:`_restart_vector`), so the
    same ``x0`` gives the same numbers. A zero ``x0`` starts from the uniform vector. Costs
    exactly ``num_iters`` matvecs.
    """
    dim, dtype = x0.shape[0], x0.dtype
    tol = 100 * jnp.finfo(dtype).eps

    def orthogonalize(Q, w):
        # Classical Gram-Schmidt against every basis row (unfilled rows are zero), twice.
        # Written (Q w) Q rather than Q^T (Q w): the same numbers, but XLA:CPU runs the
        # vector-times-matrix form 1.3-3x faster (benchmarks/README.md).
        for _ in range(2):
            w = w - (Q @ w) @ Q
        return w

    def restart_unit(i, Q):
        u = orthogonalize(Q, _restart_vector(i, dim, dtype))
        return u / jnp.linalg.norm(u)

    def step(carry, i):
        Q, q = carry
        Q = Q.at[i].set(q)
        w = mv(q)
        alpha = jnp.vdot(q, w)
        u = orthogonalize(Q, w)
        beta = jnp.linalg.norm(u)
        broke = beta <= tol * jnp.linalg.norm(w)
        q_next = jax.lax.cond(broke, lambda: restart_unit(i, Q), lambda: u / beta)
        return (Q, q_next), (alpha, jnp.where(broke, 0, beta))

    norm0 = jnp.linalg.norm(x0)
    q0 = jnp.where(norm0 > 0, x0, 1.0) / jnp.where(norm0 > 0, norm0, jnp.sqrt(dim))
    Q0 = jnp.zeros((num_iters, dim), dtype)
    (Q, _), (alphas, betas) = jax.lax.scan(step, (Q0, q0), jnp.arange(num_iters))
    return Tridiagonal(Q, alphas, betas)


def tridiagonal_eigh(tri: Tridiagonal) -> tuple[jax.Array, jax.Array]:
    """Eigen-decompose the Lanczos tridiagonal: ascending Ritz values and their vectors."""
    off = tri.betas[:-1]
    T = jnp.diag(tri.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigh(T)


def _extreme_eigs(matvec, v0, k, num_iters, top: bool) -> EigResult:
    prob = flat_problem(matvec, v0)
    k, num_iters = check_k_iters(k, num_iters, prob.dim)
    tri = tridiagonalize(prob.mv, prob.ravel(v0), num_iters)
    theta, S = tridiagonal_eigh(tri)  # ascending
    if top:
        theta, S = theta[::-1], S[:, ::-1]
    values, S_k = theta[:k], S[:, :k]
    vectors = S_k.T @ tri.basis  # (k, D)
    residuals = jnp.abs(tri.betas[-1] * S_k[-1, :])
    return EigResult(values, prob.unravel(vectors), residuals, jnp.asarray(num_iters, jnp.int32))


def top_eigs(matvec, v0, /, *, k: int = 1, num_iters: int = 20) -> EigResult:
    """Return the ``k`` largest *algebraic* eigenpairs of a symmetric operator, by Lanczos.

    "Largest algebraic" means a large negative eigenvalue never counts as "top": this is the
    sharpness (the largest Hessian eigenvalue), not the spectral radius. Full
    reorthogonalisation (blocked, twice) prevents ghost eigenvalues. Extreme eigenvalues
    converge first; the error falls geometrically in ``num_iters`` at a rate set by the gap.

    Args:
      matvec: symmetric operator ``v -> A v`` on pytrees shaped like ``v0``, or a dense
        symmetric ``(D, D)`` array.
      v0: start vector (need not be normalised). Pass the previous top eigenvector to warm
        start. Fixes the result: same ``v0``, same numbers.
      k: number of eigenpairs, ``1 <= k <= num_iters``.
      num_iters: Lanczos steps = matvecs, ``k <= num_iters <= D``.

    Returns:
      :class:`EigResult` with values in descending order.

    Raises:
      ValueError: ``k`` or ``num_iters`` out of range; ``v0`` does not match the operator or is
        not finite.

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([-5.0, 1.0, 3.0]))
      >>> float(top_eigs(A, jnp.ones(3), k=1, num_iters=3).values[0])
      3.0
    """
    return _extreme_eigs(matvec, v0, k, num_iters, top=True)


def bottom_eigs(matvec, v0, /, *, k: int = 1, num_iters: int = 20) -> EigResult:
    """Return the ``k`` smallest algebraic eigenpairs of a symmetric operator, by Lanczos.

    Same arguments and cost as :func:`top_eigs`; values come in ascending order. Useful for the
    most negative Hessian eigenvalues (saddle directions).
    """
    return _extreme_eigs(matvec, v0, k, num_iters, top=False)
