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
    # (index + salt) first: no sub-expression is loop-invariant, so XLA does not hoist part of
    # the hash into a kernel of its own (each kernel costs compile time).
    salt = (jnp.asarray(i).astype(u32) + 1) * u32(0x3C6EF372)
    h = (jnp.arange(dim, dtype=u32) + salt) * u32(0x9E3779B1)
    h = (h ^ (h >> 15)) * u32(0x2C1B3C6D)
    h = h ^ (h >> 12)
    return h.astype(dtype) * (2.0**-31) - 1.0


def tridiagonalize(mv, x0: jax.Array, num_iters: int) -> Tridiagonal:
    """Run ``num_iters`` Lanczos steps with full reorthogonalisation from ``x0`` (flat vectors).

    On breakdown (an invariant Krylov subspace, beta ~ 0), continue from a fresh deterministic
    vector orthogonal to the basis with beta = 0, so the requested number of Ritz values always
    comes out. Costs exactly ``num_iters`` matvecs.

    Written for compile time as much as for run time: on XLA:CPU every distinct kernel costs
    ~10 ms of compilation (a matrix-vector product ~40 ms), and a jitted Lanczos should compile
    in about the time of the matvec it wraps (benchmarks/bench_core.py). So the restart reuses
    the one Gram-Schmidt loop, the step's unit vector is never formed (products use the
    unnormalised vector and its scale), and scalars are kept out of kernels of their own.
    """
    dim = x0.shape[0]
    dtype = x0.dtype
    inv_tol2 = float((100 * jnp.finfo(dtype).eps) ** -2)
    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)

    def orthogonalize(Q, w, i, scale):
        # Classical Gram-Schmidt against every basis row, twice ("twice is enough"), one vector
        # at a time (XLA:CPU runs (m, D) x (D,) products 3-10x faster than a 2-row block). If
        # the first pass leaves (almost) nothing, w lies in the span of the basis: the Krylov
        # space is invariant, and the second pass projects a fresh vector instead. ``w`` comes
        # scaled by 1 / scale (the step's vector was not normalised); the first pass rescales
        # it. Returns (u, ||u||^2 = beta^2, broke), u not normalised.
        w2 = jnp.vdot(w, w)

        def body(p, c):
            u, _, broke = c
            f = jax.lax.select(p == 0, scale, one)
            u = (u - (Q @ u) @ Q) * f
            nrm2 = jnp.vdot(u, u)
            # (w2 f^2, not w2 scale^2: XLA would hoist the latter into a kernel of its own)
            restart = (p == 0) & (nrm2 * inv_tol2 <= w2 * f * f)
            # Seeded with i + p (= i where it is used), so it fuses into this select.
            u = jax.lax.select(restart, _restart_vector(i + p, dim, dtype), u)
            return u, nrm2, broke | restart

        init = (w, jnp.zeros((), dtype), jnp.zeros((), bool))
        return _loop(2, body, init)

    def body(i, carry):
        Q, ab, u, nrm2 = carry
        # The step's vector q = u * scale is never formed: the basis row and the products use
        # u and the scale (linearity), which saves XLA kernels.
        scale = _rsqrt_or_one(nrm2)
        # In place: writes one row (no negative-index wrap: one XLA kernel less to compile).
        Q = jax.lax.dynamic_update_slice(
            Q, (u * scale)[None], (i, jnp.zeros_like(i)), allow_negative_indices=False
        )
        w = mv(u)  # = A q / scale
        a = jnp.vdot(u, w) * scale * scale
        u, nrm2, broke = orthogonalize(Q, w, i, scale)
        b2 = jax.lax.select(broke, zero, nrm2)  # beta^2; square roots are taken after the loop
        # A select, not dynamic_update_slice, which rejects a and b2 if the matvec returns
        # them on a device mesh (sharded_full_data_hvp) while ab is not on one.
        row = jax.lax.broadcast_in_dim(jnp.stack([a, b2]), (num_iters, 2), (1,))
        ab = jax.lax.select(jax.lax.broadcast_in_dim(rows == i, (num_iters, 2), (0, 1)), row, ab)
        return Q, ab, u, nrm2

    # A zero start vector (it cannot be rejected under jit) starts from a restart vector.
    x0 = jax.lax.select(jnp.vdot(x0, x0) > 0, x0, _restart_vector(num_iters, dim, dtype))
    init = (
        jnp.zeros((num_iters, dim), dtype),
        jnp.zeros((num_iters, 2), dtype),
        x0,
        jnp.vdot(x0, x0),
    )
    rows = jax.lax.broadcasted_iota(jnp.asarray(0).dtype, (num_iters, 1), 0)
    Q, ab, *_ = _loop(num_iters, body, init)
    return Tridiagonal(Q, ab[:, 0], jnp.sqrt(ab[:, 1]))


def _loop(n: int, body, init):
    """``fori_loop(0, n, body, init)`` as a bare ``while_loop``.

    A static ``fori_loop`` becomes a scan, which traces and lowers more slowly (~10 ms per
    jitted Lanczos). The counter has JAX's default integer type, like every other loop's, so
    XLA compiles one increment and one comparison kernel for all of them.
    """

    def step(c):
        i, carry = c
        return i + 1, body(i, carry)

    return jax.lax.while_loop(lambda c: c[0] < n, step, (jnp.asarray(0), init))[1]


def _rsqrt_or_one(x: jax.Array) -> jax.Array:
    """``1 / sqrt(x)``, or 1 where ``x`` is 0 (normalising a zero vector leaves it zero)."""
    return jax.lax.rsqrt(jax.lax.select(x > 0, x, jnp.ones_like(x)))


def tridiagonal_eigh(tri: Tridiagonal) -> tuple[jax.Array, jax.Array]:
    """Eigen-decompose the Lanczos tridiagonal: ascending Ritz values and their vectors."""
    # One select builds the lower triangle, the only part eigh reads here (lower=True, no
    # re-symmetrising): the smallest XLA kernel for T, so a jitted Lanczos compiles faster.
    m = tri.alphas.shape[0]
    i = jax.lax.broadcasted_iota(jnp.int32, (m, m), 0)
    j = jax.lax.broadcasted_iota(jnp.int32, (m, m), 1)

    def spread(v, axis):  # (m,) -> (m, m), constant along the other axis: out[i, j] = v[i or j]
        return jax.lax.broadcast_in_dim(v, (m, m), (axis,))

    zero = jnp.zeros((m, m), tri.alphas.dtype)
    # T[i, i] = alpha_i, T[i+1, i] = beta_i; the upper triangle is left zero (unread).
    T = jax.lax.select(
        i == j, spread(tri.alphas, 0), jax.lax.select(i == j + 1, spread(tri.betas, 1), zero)
    )
    vectors, values = jax.lax.linalg.eigh(T, lower=True, symmetrize_input=False)
    return values, vectors


def _extreme_eigs(matvec, v0, k, num_iters, top: bool) -> EigResult:
    prob = flat_problem(matvec, v0)
    k, num_iters = check_k_iters(k, num_iters, prob.dim)
    tri = tridiagonalize(prob.mv, prob.ravel(v0), num_iters)
    theta, S = tridiagonal_eigh(tri)  # ascending
    # Static slices, not an index array: a gather would cost compile time.
    if top:
        values, S_k = theta[::-1][:k], S[:, ::-1][:, :k]
    else:
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
