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


def _restart_vector(i: jax.Array, dim: int, dtype: Any) -> jax.Array:
    """A deterministic pseudo-random vector in [-1, 1)^dim for restart ``i``.

    An integer hash of (index, i) rather than ``jax.random.normal``: threefry for a
    parameter-sized vector adds about a second of XLA compile time to every jitted Lanczos
    (measured in benchmarks/bench_core.py), while the restart only needs a vector that is not in
    the current Krylov space.
    """
    u32 = jnp.uint32
    h = jnp.arange(dim, dtype=u32) * u32(0x9E3779B1) + (jnp.asarray(i).astype(u32) + 1) * u32(
        0x85EBCA77
    )
    h = (h ^ (h >> 15)) * u32(0x2C1B3C6D)
    h = (h ^ (h >> 12)) * u32(0x297A2D39)
    h = h ^ (h >> 15)
    return h.astype(dtype) * (2.0**-31) - 1.0


def tridiagonalize(mv, x0: jax.Array, num_iters: int) -> Tridiagonal:
    """Run ``num_iters`` Lanczos steps with full reorthogonalisation from ``x0`` (flat vectors).

    On breakdown (an invariant Krylov subspace, beta ~ 0), continue from a fresh deterministic
    vector orthogonal to the basis with beta = 0, so the requested number of Ritz values always
    comes out. Costs exactly ``num_iters`` matvecs.
    """
    dim = x0.shape[0]
    dtype = x0.dtype
    eps = jnp.finfo(dtype).eps

    def orthogonalize(Q, v):
        # Classical Gram-Schmidt against every basis row, twice ("twice is enough"). One vector
        # at a time: XLA:CPU runs the (m, D) x (D,) products 3-10x faster than a 2-row block,
        # and the loop over the two passes compiles the projection once.
        return jax.lax.fori_loop(0, 2, lambda _, u: u - (Q @ u) @ Q, v)

    def body(i, carry):
        Q, alphas, betas, q, anorm = carry
        Q = jax.lax.dynamic_update_index_in_dim(Q, q, i, 0)  # in place: writes one row
        w = mv(q)
        a = jnp.vdot(q, w)
        anorm = jnp.maximum(anorm, jnp.linalg.norm(w))  # ||A q||: the breakdown scale
        w = orthogonalize(Q, w)
        b = jnp.linalg.norm(w)
        # A (near-)zero remainder means the Krylov space is invariant: continue from a fresh
        # vector orthogonal to the basis, with beta = 0. Rare, so it runs only when needed (under
        # vmap both branches run and a select picks).
        broke = b <= 100 * eps * anorm

        def restart(_):
            r = orthogonalize(Q, _restart_vector(i, dim, dtype))
            n = jnp.linalg.norm(r)  # 0 only once the basis spans the space (the last step)
            return r / jnp.where(n > 0, n, 1)

        q_next = jax.lax.cond(broke, restart, lambda _: w / jnp.where(b > 0, b, 1), None)
        b = jnp.where(broke, 0, b).astype(dtype)
        return Q, alphas.at[i].set(a), betas.at[i].set(b), q_next, anorm

    q0 = x0 / jnp.linalg.norm(x0)
    init = (
        jnp.zeros((num_iters, dim), dtype),
        jnp.zeros((num_iters,), dtype),
        jnp.zeros((num_iters,), dtype),
        q0,
        jnp.zeros((), dtype),
    )
    Q, alphas, betas, _, _ = jax.lax.fori_loop(0, num_iters, body, init)
    return Tridiagonal(Q, alphas, betas)


def tridiagonal_eigh(tri: Tridiagonal) -> tuple[jax.Array, jax.Array]:
    """Eigen-decompose the Lanczos tridiagonal: ascending Ritz values and their vectors."""
    # Built with one select and decomposed without re-symmetrising (T is symmetric by
    # construction): fewer XLA kernels, so a jitted Lanczos compiles faster.
    i = jnp.arange(tri.alphas.shape[0])
    offset = i[:, None] - i[None, :]
    T = jnp.where(
        offset == 0,
        tri.alphas[:, None],
        jnp.where(jnp.abs(offset) == 1, tri.betas[jnp.minimum(i[:, None], i[None, :])], 0),
    )
    vectors, values = jax.lax.linalg.eigh(T, symmetrize_input=False)
    return values, vectors


def _extreme_eigs(matvec, v0, k, num_iters, top: bool) -> EigResult:
    prob = flat_problem(matvec, v0)
    k, num_iters = check_k_iters(k, num_iters, prob.dim)
    tri = tridiagonalize(prob.mv, prob.ravel(v0), num_iters)
    theta, S = tridiagonal_eigh(tri)
    idx = jnp.arange(num_iters - 1, num_iters - 1 - k, -1) if top else jnp.arange(k)
    values = theta[idx]
    S_k = S[:, idx]
    vectors = S_k.T @ tri.basis  # (k, D)
    residuals = jnp.abs(tri.betas[-1] * S_k[-1, :])
    return EigResult(
        values,
        jax.vmap(prob.unravel)(vectors),
        residuals,
        jnp.asarray(num_iters, jnp.int32),
    )


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
