"""Lanczos with full reorthogonalisation: top-k and bottom-k eigenpairs by algebraic value.

Each step orthogonalises the new vector against the whole basis twice, as a blocked
``w - Q^T (Q w)`` (classical Gram-Schmidt, "twice is enough"), which keeps the basis orthonormal
to working precision and so produces no ghost (spurious duplicate) eigenvalues. The basis costs
``num_iters x D`` memory; each step costs one matvec plus ``4 num_iters D`` flops (the basis is read
four times).

Reliability: the residuals are recomputed with ``k`` extra products (the recurrence's estimate
``|beta_m s_mj|`` can be far too small in float32), or, with ``exact_residuals=False``, taken
from the products already made, rounded up (:func:`basis_residuals`); a non-finite product
raises eagerly and sets ``finite=False`` under ``jit``; and for ``k >= 2`` a short Lanczos
run on the operator projected onto the orthogonal complement of the Krylov basis flags
(``missed``) values that a single start vector cannot see: the other copies of a repeated
eigenvalue, or directions ``v0`` is orthogonal to.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import tree as tu
from ._matvec import (
    check_bool,
    check_finite_products,
    check_int,
    check_k_iters,
    flat_problem,
    nan_unless,
)

__all__ = ["EigResult", "bottom_eigs", "top_eigs", "tridiagonalize"]

PyTree = Any


class EigResult(NamedTuple):
    """Eigenpairs from an iterative solver.

    Attributes:
      values: ``(k,)`` eigenvalues; descending for top-k, ascending for bottom-k.
      vectors: eigenvectors, a pytree like the start vector with a leading axis of size ``k``
        (for a dense matrix, a ``(k, D)`` array). Unit norm, sign arbitrary.
      residuals: ``(k,)`` true residual norms ``||A y - lambda y||`` of the returned pairs,
        recomputed with one product per pair in the working precision (Lanczos with
        ``exact_residuals=False``: from the run's own products plus a rounding allowance).
      num_matvecs: number of operator products used, residual and check products included.
      finite: bool, True when every product was finite. Eagerly a non-finite product raises
        instead; under ``jit`` values, vectors and residuals are then NaN.
      missed: bool (Lanczos, ``check_iters > 0``): a value beyond the k-th returned one lies
        outside the Krylov space, so at least one returned value is likely not among the true
        top-k (bottom-k): a repeated eigenvalue's other copies, or a direction ``v0`` did not
        reach. Information, not an error: eagerly it also warns. Always False for power
        iteration, which does not run the check.
    """

    values: jax.Array
    vectors: PyTree
    residuals: jax.Array
    num_matvecs: jax.Array
    finite: jax.Array = True
    missed: jax.Array = False


class Tridiagonal(NamedTuple):
    """A Lanczos decomposition ``A Q^T ~ Q^T T``: basis rows ``Q``, diagonal and off-diagonal."""

    basis: jax.Array  # (m, D), orthonormal rows
    alphas: jax.Array  # (m,)
    betas: jax.Array  # (m,), betas[m-1] couples to the next (unused) basis vector
    # The products in the basis: coeffs[j] are the Gram-Schmidt coefficients of A q_j on the
    # rows q_0..q_j (both passes summed; later rows zero), norms[j] the norm of what is left,
    # broke[j] whether that rest was dropped for a restart vector (a breakdown or restart_after)
    coeffs: jax.Array | None = None  # (m, m)
    norms: jax.Array | None = None  # (m,)
    broke: jax.Array | None = None  # (m,) bool


def _restart_vector(i, dim: int, dtype) -> jax.Array:
    # A fixed, generic direction for restart i: cos(k (i + phi)), k = 0..dim-1 (phi the golden
    # ratio). Not jax.random: drawing it with jax.random added ~310 ms (40%) to every Lanczos
    # compile on CPU (760-800 vs 450-500 ms for a jitted 20-step top_eigs on a 200 x 200 matrix,
    # jax 0.10.2, idle 2-core machine), and the test suite compiles Lanczos about a hundred times.
    return jnp.cos(jnp.arange(dim, dtype=dtype) * (i + 1.618033988749895))


def tridiagonalize(
    mv, x0: jax.Array, num_iters: int, *, restart_after: int | None = None
) -> Tridiagonal:
    """Run ``num_iters`` Lanczos steps with full reorthogonalisation from ``x0`` (flat vectors).

    On breakdown (an invariant Krylov subspace: the new vector vanishes against the basis),
    continue from a fresh vector orthogonal to the basis with beta = 0, so the requested number of
    Ritz values always comes out. The fresh vectors are fixed (:func:`_restart_vector`), so the
    same ``x0`` gives the same numbers. A zero ``x0`` starts from the uniform vector. Costs
    exactly ``num_iters`` matvecs.

    ``restart_after=m`` forces that restart after step ``m``: since every later vector is
    orthogonalised against the whole basis, steps ``m + 1, ...`` are Lanczos on ``A`` projected
    onto the complement of the first ``m`` basis vectors, and the tridiagonal splits into two
    blocks (``betas[m - 1] = 0``).
    """
    dim, dtype = x0.shape[0], x0.dtype
    tol = 100 * jnp.finfo(dtype).eps

    def orthogonalize(Q, w):
        # Classical Gram-Schmidt against every basis row (unfilled rows are zero), twice.
        # Written (Q w) Q rather than Q^T (Q w): the same numbers, but XLA:CPU runs the
        # vector-times-matrix form 1.3-3x faster (benchmarks/README.md).
        total = jnp.zeros(Q.shape[0], w.dtype)
        for _ in range(2):
            c = Q @ w
            w = w - c @ Q
            total = total + c
        return w, total

    def restart_unit(i, Q):
        u = orthogonalize(Q, _restart_vector(i, dim, dtype))[0]
        return u / jnp.linalg.norm(u)

    def step(carry, i):
        Q, q = carry
        Q = Q.at[i].set(q)
        w = mv(q)
        alpha = jnp.vdot(q, w)
        u, coeffs = orthogonalize(Q, w)
        beta = jnp.linalg.norm(u)
        broke = beta <= tol * jnp.linalg.norm(w)
        if restart_after is not None:
            broke |= i == restart_after - 1
        q_next = jax.lax.cond(broke, lambda: restart_unit(i, Q), lambda: u / beta)
        return (Q, q_next), (alpha, jnp.where(broke, 0, beta), coeffs, beta, broke)

    norm0 = jnp.linalg.norm(x0)
    q0 = jnp.where(norm0 > 0, x0, 1.0) / jnp.where(norm0 > 0, norm0, jnp.sqrt(dim))
    Q0 = jnp.zeros((num_iters, dim), dtype)
    (Q, _), out = jax.lax.scan(step, (Q0, q0), jnp.arange(num_iters))
    return Tridiagonal(Q, *out)


def tridiagonal_eigh(tri: Tridiagonal) -> tuple[jax.Array, jax.Array]:
    """Eigen-decompose the Lanczos tridiagonal: ascending Ritz values and their vectors."""
    off = tri.betas[:-1]
    T = jnp.diag(tri.alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return jnp.linalg.eigh(T)


def true_residuals(mv, vectors: jax.Array, values: jax.Array) -> jax.Array:
    """``||A y_j - lambda_j y_j||`` for the rows ``y_j`` of ``vectors``: one product each, in
    sequence (memory ``O(D)``), in the working precision."""

    def one(pair):
        y, lam = pair
        return jnp.linalg.norm(mv(y) - lam * y)

    return jax.lax.map(one, (vectors, values))


def _auto_check_iters(check_iters: Any, k: int, num_iters: int, dim: int) -> int:
    # k == 1: the top value of a repeated eigenvalue is still right, so nothing to check. k >= 2:
    # the check has to lift one Rayleigh quotient of the complement above the k-th value, not
    # converge. On 20 spectra (D = 60) with a triple top eigenvalue and 20 main steps it flagged
    # 0/20 after 1 step, 13/20 after 2, 20/20 after 3; max(5, 2k) leaves a margin, and raised no
    # false alarm on 240 generic spectra (normal, uniform, power-law, Hessian-like; k = 2, 3, 5).
    # At most the main budget, and never past the whole space.
    if check_iters is None:
        check_iters = 0 if k == 1 else min(max(5, 2 * k), num_iters)
    else:
        check_int(check_iters, "check_iters", 0)
    return min(check_iters, dim - num_iters)


def _block(tri: Tridiagonal, lo: int, hi: int) -> Tridiagonal:
    return Tridiagonal(
        tri.basis[lo:hi],
        tri.alphas[lo:hi],
        tri.betas[lo:hi],
        tri.coeffs[lo:hi, lo:hi],
        tri.norms[lo:hi],
        tri.broke[lo:hi],
    )


def basis_residuals(tri: Tridiagonal, S: jax.Array, values: jax.Array) -> jax.Array:
    """``||A y_j - lambda_j y_j||`` for the Ritz vectors ``y_j = S[:, j]^T Q``, from the products
    the run made: no further product.

    Each product was split as ``A q_i = sum_l coeffs[i, l] q_l + rest_i``, with ``rest_i`` the
    next basis vector times ``norms[i]``, except where it was dropped for a restart vector. So
    ``A y - lambda y`` is ``Q^T (B s - lambda s)`` (``B`` the coefficients, the kept rests on its
    subdiagonal) plus the last step's rest, orthogonal to the basis, plus the dropped rests
    (each below ``100 eps`` of its product; added as norms, so the result only grows). The
    coefficients of the two Gram-Schmidt passes are summed, so ``B`` keeps what the tridiagonal
    drops: the reorthogonalisation terms, and the asymmetry rounding puts into the products.
    A rounding allowance ``m^1.5 eps max_i ||A q_i||`` (the Gram-Schmidt's own rounding, summed
    over the basis) is added, so the result bounds the residual against the products as they
    were computed, to rounding.
    """
    m = tri.alphas.shape[0]
    kept = jnp.where(tri.broke[:-1], 0, tri.norms[:-1])
    B = tri.coeffs.T + jnp.diag(kept, -1)  # column i: A q_i in the basis
    inside = B @ S - S * values[None, :]  # (m, k)
    outside = tri.norms[-1] * S[-1]
    dropped = jnp.where(tri.broke[:-1], tri.norms[:-1], 0) @ jnp.abs(S[:-1])
    product_norms = jnp.sqrt(jnp.sum(tri.coeffs**2, axis=1) + tri.norms**2)
    allowance = m**1.5 * jnp.finfo(S.dtype).eps * jnp.max(product_norms)
    return jnp.sqrt(jnp.sum(inside**2, axis=0) + outside**2) + dropped + allowance


def _first_bad(steps_ok: jax.Array, k: int) -> str:
    ok = np.asarray(steps_ok)
    if ok.all():
        return f"in the {k} residual products"
    return f"first at Lanczos product {int(np.argmin(ok)) + 1} of {ok.size}"


def _nudged(x0: jax.Array) -> jax.Array:
    """``v0`` (unit length) plus a 1e-3 share of a fixed generic direction; zero stays zero.

    A Krylov method only sees eigenvectors its start has a component along: from a ``v0``
    exactly orthogonal to the top eigenvector (a zero entry on a diagonal matrix, a symmetric
    start on a symmetric problem) it would return the second eigenvalue with a tiny residual,
    silently. The share makes exact orthogonality impossible; Krylov amplification lets even a
    1e-3 component reach the top within the usual budget, and a warm start loses nothing
    measurable.
    """
    norm0 = jnp.linalg.norm(x0)
    r = _restart_vector(-1, x0.shape[0], x0.dtype)
    r = r / jnp.linalg.norm(r)
    return jnp.where(norm0 > 0, x0 / jnp.where(norm0 > 0, norm0, 1) + 1e-3 * r, x0)


def _extreme_eigs(matvec, v0, k, num_iters, check_iters, exact_residuals, top: bool) -> EigResult:
    exact = check_bool(exact_residuals, "exact_residuals")
    prob = flat_problem(matvec, v0)
    k, num_iters = check_k_iters(k, num_iters, prob.dim)
    check_iters = _auto_check_iters(check_iters, k, num_iters, prob.dim)
    # The check continues the same run past a forced restart (tridiagonalize's restart_after):
    # Lanczos on A projected onto the complement of the Krylov basis. One scan, not a second
    # one on the projected operator: that doubled the compile time of a jitted k = 3, 20-step
    # top_eigs on a 200 x 200 matrix (1.5 s against 0.8 s, CPU, jax 0.10.2), and the matvec
    # (a full-data HVP) would be compiled twice.
    m = num_iters
    tri = tridiagonalize(
        prob.mv, _nudged(prob.ravel(v0)), m + check_iters, restart_after=m if check_iters else None
    )
    steps_ok = jnp.isfinite(tri.alphas) & jnp.isfinite(tri.betas)  # NaN/inf products propagate
    finite = jnp.all(steps_ok)
    tri, check = _block(tri, 0, m), _block(tri, m, m + check_iters)
    theta, S = tridiagonal_eigh(tri)  # ascending
    if top:
        theta, S = theta[::-1], S[:, ::-1]
    values, S_k = theta[:k], S[:, :k]
    vectors = S_k.T @ tri.basis  # (k, D)
    if exact:
        residuals = true_residuals(prob.mv, vectors, values)
    else:
        residuals = basis_residuals(tri, S_k, values)
    finite &= jnp.all(jnp.isfinite(residuals))
    missed = jnp.zeros((), bool)
    if check_iters:
        mu = tridiagonal_eigh(check)[0][-1 if top else 0]
        # Beyond the k-th value by more than the residuals (which bound the coupling between the
        # Ritz vectors and the complement) plus rounding: not a tie at the k-th place.
        eps = jnp.finfo(prob.dtype).eps
        tol = jnp.linalg.norm(residuals) + 100 * eps * jnp.max(jnp.abs(theta))
        missed = (mu - values[-1] if top else values[-1] - mu) > tol
    num_matvecs = jnp.asarray(num_iters + k * exact + check_iters, jnp.int32)
    if check_finite_products(finite, lambda: _first_bad(steps_ok, k)):
        values, residuals = nan_unless(finite, values), nan_unless(finite, residuals)
        vectors = nan_unless(finite, vectors)
        missed &= finite
    elif tu.is_concrete(missed) and bool(missed):
        warnings.warn(
            f"{'top' if top else 'bottom'}_eigs: a value beyond the k-th returned one lies "
            "outside the Krylov space: at least one returned value is likely not among the true "
            f"{'top' if top else 'bottom'}-{k} (a repeated eigenvalue's other copies, or a "
            "direction v0 did not reach); raise num_iters or try another v0 (result.missed)",
            RuntimeWarning,
            stacklevel=3,
        )
    return EigResult(values, prob.unravel(vectors), residuals, num_matvecs, finite, missed)


def top_eigs(
    matvec,
    v0,
    /,
    *,
    k: int = 1,
    num_iters: int = 20,
    check_iters: int | None = None,
    exact_residuals: bool = True,
) -> EigResult:
    """Return the ``k`` largest *algebraic* eigenpairs of a symmetric operator, by Lanczos.

    "Largest algebraic" means a large negative eigenvalue never counts as "top": this is the
    sharpness (the largest Hessian eigenvalue), not the spectral radius. Full
    reorthogonalisation (blocked, twice) prevents ghost eigenvalues. Extreme eigenvalues
    converge first; the error falls geometrically in ``num_iters`` at a rate set by the gap.

    A single start vector sees one copy of a repeated eigenvalue and nothing it is orthogonal
    to. The check (``check_iters`` more steps on ``A`` projected onto the complement of the
    Krylov basis, from a fixed direction) sets ``missed`` when it finds a Rayleigh quotient above
    the k-th value by more than the residual norm plus rounding.

    Cost: ``num_iters`` products for the basis, ``k`` to recompute the residuals exactly (none
    with ``exact_residuals=False``), and ``check_iters`` for the check; all counted in
    ``num_matvecs``.

    Args:
      matvec: symmetric operator ``v -> A v`` on pytrees shaped like ``v0``, or a dense
        symmetric ``(D, D)`` array (checked for symmetry and finiteness when concrete; a dense
        matrix traced under ``jit`` cannot be checked).
      v0: start vector (need not be normalised). Pass the previous top eigenvector to warm
        start. Fixes the result: same ``v0``, same numbers.
      k: number of eigenpairs, ``1 <= k <= num_iters``.
      num_iters: Lanczos steps, ``k <= num_iters <= D``.
      check_iters: steps of the missed-value check, an int >= 0 clamped to ``D - num_iters``.
        Default ``None``: 0 for ``k == 1`` (the top value of a repeated eigenvalue is still
        right), else ``min(max(5, 2k), num_iters, D - num_iters)``.
      exact_residuals: True (default): each residual ``||A y - lambda y||`` is recomputed with
        one more product. False: taken from the products the run already made (the
        Gram-Schmidt coefficients of each product, not the tridiagonal's ``|beta_m s_mj|``),
        plus a rounding allowance: an upper bound to rounding, equal to the recomputed one
        wherever it is well above ``num_iters^1.5 eps ||A||``, and ``k`` products cheaper (one
        in six for a 5-step warm start). The values and vectors are the same either way.

    Returns:
      :class:`EigResult` with values in descending order, ``finite`` and ``missed`` flags.

    Raises:
      ValueError: ``k``, ``num_iters`` or ``check_iters`` out of range; ``v0`` does not match
        the operator or is not finite; a dense ``matvec`` is not symmetric or finite; a callable
        returns a pytree unlike ``v0``. Called eagerly, also when a product is NaN or inf
        (under ``jit``: ``finite=False`` and NaN results). ``missed`` never raises; eagerly it
        warns (``RuntimeWarning``).

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([-5.0, 1.0, 3.0]))
      >>> float(top_eigs(A, jnp.ones(3), k=1, num_iters=3).values[0])
      3.0
    """
    return _extreme_eigs(matvec, v0, k, num_iters, check_iters, exact_residuals, top=True)


def bottom_eigs(
    matvec,
    v0,
    /,
    *,
    k: int = 1,
    num_iters: int = 20,
    check_iters: int | None = None,
    exact_residuals: bool = True,
) -> EigResult:
    """Return the ``k`` smallest algebraic eigenpairs of a symmetric operator, by Lanczos.

    Same arguments, cost, flags and errors as :func:`top_eigs` (the check looks for a value
    below the k-th); values come in ascending order. Useful for the most negative Hessian
    eigenvalues (saddle directions).
    """
    return _extreme_eigs(matvec, v0, k, num_iters, check_iters, exact_residuals, top=False)
