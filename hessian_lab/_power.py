"""Power iteration for the largest *algebraic* eigenvalue, with deflation for top-k.

Plain power iteration converges to the largest-*magnitude* eigenvalue, which for a Hessian with
a large negative eigenvalue is not the sharpness. We run it in two phases: a quarter of the
budget on ``A``; if its Rayleigh quotient is negative (a negative eigenvalue dominates), the rest
runs on ``A + s I`` with ``s`` the spectral-radius estimate, whose dominant eigenvalue is
``lambda_max + s``, restarted from the start vector (phase one may have removed every component
along the top eigenvector: on ``diag(0, -1, -2)`` it does, exactly). Otherwise the iteration
simply continues on ``A``. A product that vanishes (the zero operator) leaves the vector as it
is, so the zero operator gives 0, not NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._lanczos import EigResult
from ._matvec import check_int, flat_problem

__all__ = ["power_iteration"]


def _power_flat(mv, x0, basis, num_iters):
    """Power iteration on ``(I - B^T B) A (I - B^T B)``; returns (value, vector, residual)."""

    def project(x):
        return x - basis.T @ (basis @ x)

    def op(x):
        return project(mv(project(x)))

    def step(carry, shift):
        x, _ = carry
        y = op(x)
        lam = jnp.vdot(x, y)
        z = y + shift * x
        nz = jnp.linalg.norm(z)
        return jnp.where(nz > 0, z / jnp.where(nz > 0, nz, 1), x), lam

    def phase(x, shift, n):
        def body(_, c):
            x, lam = c
            return step((x, lam), shift)

        return jax.lax.fori_loop(0, n, body, (x, jnp.zeros((), x.dtype)))

    start = project(x0)
    start = start / jnp.linalg.norm(start)
    n1 = max(num_iters // 4, 1)
    x, lam1 = phase(start, jnp.zeros((), start.dtype), n1)
    rho = jnp.linalg.norm(op(x))  # spectral-radius estimate (one extra matvec)
    shift = jnp.where(lam1 < 0, rho, 0.0).astype(x.dtype)
    x, _ = phase(jnp.where(lam1 < 0, start, x), shift, num_iters - n1)
    y = op(x)
    lam = jnp.vdot(x, y)
    return lam, x, jnp.linalg.norm(y - lam * x)


def power_iteration(matvec, v0, /, *, num_iters: int = 100, k: int = 1) -> EigResult:
    """Return the ``k`` largest algebraic eigenpairs by (shifted) power iteration with deflation.

    Cheaper per step than Lanczos (no basis) but converges only like
    ``((lambda_2 + s) / (lambda_1 + s))^t``: prefer :func:`top_eigs`. A negative eigenvalue of
    larger magnitude never wins (see the module docstring). For ``k > 1``, eigenpair ``j`` is
    found on the operator deflated by the first ``j - 1`` vectors.

    Args:
      matvec: symmetric operator on pytrees shaped like ``v0``, or a dense ``(D, D)`` array.
      v0: start vector.
      num_iters: iterations per eigenpair, at least 2.
      k: number of eigenpairs (1 <= k <= D).

    Returns:
      :class:`EigResult`; ``num_matvecs = k * (num_iters + 2)``; residuals are exact
      ``||A y - lambda y||``.

    Raises:
      ValueError: ``num_iters`` < 2, ``k`` out of range, or a bad ``v0``.
    """
    prob = flat_problem(matvec, v0)
    check_int(num_iters, "num_iters", 2)
    check_int(k, "k", 1, prob.dim)
    x0 = prob.ravel(v0)
    basis = jnp.zeros((k, prob.dim), prob.dtype)
    values, residuals = [], []
    for j in range(k):
        lam, x, res = _power_flat(prob.mv, x0, basis, num_iters)
        basis = basis.at[j].set(x)
        values.append(lam)
        residuals.append(res)
    values = jnp.stack(values)
    order = jnp.argsort(-values)
    return EigResult(
        values[order],
        prob.unravel(basis[order]),
        jnp.stack(residuals)[order],
        jnp.asarray(k * (num_iters + 2), jnp.int32),
    )
