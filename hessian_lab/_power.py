"""Power iteration for the largest *algebraic* eigenvalue, with deflation for top-k.

Plain power iteration converges to the largest-*magnitude* eigenvalue, which for a Hessian with
a large negative eigenvalue is not the sharpness. We run it in two phases: a quarter of the
budget on ``A``; if its Rayleigh quotient is negative (a negative eigenvalue dominates), the rest
runs on ``A + s I`` with ``s`` the spectral-radius estimate, whose dominant eigenvalue is
``lambda_max + s``, restarted from the start vector (phase one may have removed every component
along the top eigenvector: on ``diag(0, -1, -2)`` it does, exactly). Otherwise the iteration
simply continues on ``A``. A product that vanishes (the zero operator) leaves the vector as it
is, so the zero operator gives 0, not NaN; a zero start vector becomes the uniform vector. A
non-finite product is tracked in the loop carry (no extra products) and raises eagerly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._lanczos import EigResult, _restart_vector
from ._matvec import MAX_COUNT, check_finite_products, check_int, flat_problem, nan_unless

__all__ = ["power_iteration"]


def _power_flat(mv, x0, basis, num_iters, j):
    """Power iteration on ``(I - B^T B) A (I - B^T B)`` for pair ``j``.

    Returns (value, vector, true residual ``||A x - value x||``, all products finite).
    """

    def project(x):
        return x - basis.T @ (basis @ x)

    def op(x):
        return project(mv(project(x)))

    def step(carry, shift):
        x, _, ok = carry
        y = op(x)
        lam = jnp.vdot(x, y)
        z = y + shift * x
        nz = jnp.linalg.norm(z)
        x = jnp.where(nz > 0, z / jnp.where(nz > 0, nz, 1), x)
        return x, lam, ok & jnp.all(jnp.isfinite(y))

    def phase(x, shift, n, ok):
        def body(_, c):
            return step(c, shift)

        return jax.lax.fori_loop(0, n, body, (x, jnp.zeros((), x.dtype), ok))

    # v0 may lie in the span of the pairs already found (v0 = the top eigenvector, k = 2): then
    # start from the fixed restart direction, as Lanczos does, not from 0 / 0.
    start = project(x0)
    fallback = project(_restart_vector(j, x0.shape[0], x0.dtype))
    small = jnp.linalg.norm(start) <= 100 * jnp.finfo(x0.dtype).eps * jnp.linalg.norm(x0)
    start = jnp.where(small, fallback, start)
    start = start / jnp.linalg.norm(start)
    # A 1e-3 share of the fixed generic direction: power iteration can only find eigenvectors
    # the start has a component along, and a v0 exactly orthogonal to the top one (a zero entry
    # on a diagonal matrix) would converge, silently, to the second. The share decays like
    # any other non-top component, so a warm start loses nothing measurable.
    nudge = fallback / jnp.maximum(jnp.linalg.norm(fallback), jnp.finfo(x0.dtype).tiny)
    start = start + 1e-3 * nudge
    start = start / jnp.linalg.norm(start)
    n1 = max(num_iters // 4, 1)
    x, lam1, ok = phase(start, jnp.zeros((), start.dtype), n1, jnp.ones((), bool))
    rho = jnp.linalg.norm(op(x))  # spectral-radius estimate (one extra matvec)
    ok &= jnp.isfinite(rho)
    shift = jnp.where(lam1 < 0, rho, 0.0).astype(x.dtype)
    x, _, ok = phase(jnp.where(lam1 < 0, start, x), shift, num_iters - n1, ok)
    # The returned pair's own residual on A (not on the deflated operator): x is orthogonal to
    # the basis, so mv(x) is the product op(x) would start from.
    y = mv(x)
    lam = jnp.vdot(x, y)
    res = jnp.linalg.norm(y - lam * x)
    return lam, x, res, ok & jnp.isfinite(res)


def power_iteration(matvec, v0, /, *, num_iters: int = 100, k: int = 1) -> EigResult:
    """Return the ``k`` largest algebraic eigenpairs by (shifted) power iteration with deflation.

    Cheaper per step than Lanczos (no basis) but converges only like
    ``((lambda_2 + s) / (lambda_1 + s))^t``: prefer :func:`top_eigs`. A negative eigenvalue of
    larger magnitude never wins (see the module docstring). For ``k > 1``, eigenpair ``j`` is
    found on the operator deflated by the first ``j - 1`` vectors. A zero ``v0`` starts from
    the uniform vector; a start with nothing left after deflation, from a fixed direction.
    There is no missed-value check (``missed`` is always False): it cannot see a direction it
    was never given either, and a repeated eigenvalue is found once per copy by deflation.

    Args:
      matvec: symmetric operator on pytrees shaped like ``v0``, or a dense ``(D, D)`` array.
      v0: start vector.
      num_iters: iterations per eigenpair, at least 2.
      k: number of eigenpairs (1 <= k <= D).

    Returns:
      :class:`EigResult`; ``num_matvecs = k * (num_iters + 2)``; residuals are the true
      ``||A y - lambda y||`` of the returned pairs (from the last product, not an extra one).

    Raises:
      ValueError: ``num_iters`` < 2, ``k`` out of range, or a bad ``v0`` or ``matvec`` (as in
        :func:`hessian_lab.top_eigs`). Called eagerly, also when a product is NaN or inf (under
        ``jit``: ``finite=False`` and NaN results).

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([0.0, -1.0, -2.0]))
      >>> abs(float(power_iteration(A, jnp.ones(3), num_iters=60).values[0])) < 1e-6
      True
    """
    prob = flat_problem(matvec, v0)
    check_int(k, "k", 1, prob.dim)
    check_int(num_iters, "num_iters", 2, MAX_COUNT // k - 2)
    x0 = prob.ravel(v0)
    norm0 = jnp.linalg.norm(x0)
    x0 = jnp.where(norm0 > 0, x0, 1.0)  # a zero start (possible under jit): the uniform vector
    basis = jnp.zeros((k, prob.dim), prob.dtype)
    values, residuals, finite = [], [], jnp.ones((), bool)
    for j in range(k):
        lam, x, res, ok = _power_flat(prob.mv, x0, basis, num_iters, j)
        basis = basis.at[j].set(x)
        values.append(lam)
        residuals.append(res)
        finite &= ok
    values, residuals = jnp.stack(values), jnp.stack(residuals)
    if check_finite_products(finite, lambda: f"power iteration, k={k}"):
        values, residuals = nan_unless(finite, values), nan_unless(finite, residuals)
        basis = nan_unless(finite, basis)
    order = jnp.argsort(-values)
    return EigResult(
        values[order],
        prob.unravel(basis[order]),
        residuals[order],
        jnp.asarray(k * (num_iters + 2), jnp.int32),
        finite,
        jnp.zeros((), bool),
    )
