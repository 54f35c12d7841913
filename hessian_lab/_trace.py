"""Stochastic trace estimation: Hutchinson (Rademacher) and Hutch++.

Hutchinson: ``tr(A) ~ (1/m) sum_i z_i^T A z_i`` with Rademacher ``z_i``; unbiased, variance
``2 (||A||_F^2 - sum_i A_ii^2) / m``. Hutch++ (Meyer, Musco, Musco & Woodruff 2021, arXiv
2010.09649) spends a third of the budget on a sketch ``Q = orth(A S)``, takes ``tr(Q^T A Q)``
exactly and Hutchinson only on the deflated remainder ``(I - QQ^T) A (I - QQ^T)``: error
``O(1/m)`` instead of ``O(1/sqrt(m))`` for matrices with decaying spectra.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from ._matvec import (
    MAX_COUNT,
    check_finite_products,
    check_int,
    check_key,
    flat_problem,
    like_for,
    nan_unless,
)

__all__ = ["TraceResult", "trace"]


class TraceResult(NamedTuple):
    """A stochastic trace estimate.

    Attributes:
      value: the estimate of ``tr(A)``.
      stderr: its standard error, from the spread of the Hutchinson samples (for Hutch++, of
        the deflated remainder; the sketched part is exact given the sketch).
      num_matvecs: operator products used.
      finite: bool, True when every product was finite. Eagerly a non-finite product raises
        instead; under ``jit`` value and stderr are then NaN.
    """

    value: jax.Array
    stderr: jax.Array
    num_matvecs: jax.Array
    finite: jax.Array = True


def _hutchinson(mv, key, m, dim, dtype):
    """Sample mean and standard error of ``z^T A z`` over ``m`` Rademacher probes.

    Probe ``i`` is drawn from ``fold_in(key, i)`` inside the sequential loop, so only one
    probe is alive at a time: memory ``O(D)``, not ``m x D``.
    """

    def sample(i):
        z = jax.random.rademacher(jax.random.fold_in(key, i), (dim,), dtype)
        return jnp.vdot(z, mv(z))  # NaN or inf in the product reaches the sample

    samples = jax.lax.map(sample, jnp.arange(m))
    finite = jnp.all(jnp.isfinite(samples))
    return jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(m), finite


def trace(
    matvec,
    key: jax.Array,
    like,
    /,
    *,
    num_matvecs: int = 30,
    method: Literal["hutchinson", "hutchpp"] = "hutchinson",
) -> TraceResult:
    """Estimate ``tr(A)`` of a symmetric operator with a fixed budget of matvecs.

    Args:
      matvec: operator on pytrees shaped like ``like``, or a dense ``(D, D)`` array.
      key: PRNG key for the probes.
      like: a vector (pytree) with the operator's input shape, e.g. ``params``; for a dense
        matrix a 1-D array or the int ``D``.
      num_matvecs: total budget; at least 2 (hutchinson) or 6 (hutchpp).
      method: ``"hutchinson"`` (default) or ``"hutchpp"``.

    Returns:
      :class:`TraceResult`, with ``finite``.

    Raises:
      ValueError: unknown ``method``, a budget out of range, ``key`` not a PRNG key, ``like``
        or ``matvec`` unusable (as in :func:`hessian_lab.top_eigs`). Called eagerly, also when a
        product is NaN or inf (under ``jit``: ``finite=False`` and a NaN value).
    """
    if method not in ("hutchinson", "hutchpp"):
        raise ValueError(f"method: must be 'hutchinson' or 'hutchpp', got {method!r}")
    check_key(key)
    like = like_for(matvec, like)
    prob = flat_problem(matvec, like, name="like")
    check_int(num_matvecs, "num_matvecs", 2 if method == "hutchinson" else 6, MAX_COUNT)
    if method == "hutchinson":
        value, stderr, finite = _hutchinson(prob.mv, key, num_matvecs, prob.dim, prob.dtype)
        return _result(value, stderr, num_matvecs, finite, method)

    s = min(num_matvecs // 3, prob.dim)
    g = num_matvecs - 2 * s
    k_sketch, k_probe = jax.random.split(key)
    S = jax.random.rademacher(k_sketch, (s, prob.dim), prob.dtype)
    AS = jax.lax.map(prob.mv, S)
    Q = jnp.linalg.qr(AS.T)[0]  # (D, s), orthonormal columns
    AQ = jax.lax.map(prob.mv, Q.T)  # (s, D)
    exact = jnp.trace(Q.T @ AQ.T)

    def deflated(z):
        z = z - Q @ (Q.T @ z)
        w = prob.mv(z)
        return w - Q @ (Q.T @ w)

    rest, stderr, finite = _hutchinson(deflated, k_probe, g, prob.dim, prob.dtype)
    finite &= jnp.all(jnp.isfinite(AS)) & jnp.all(jnp.isfinite(AQ))
    return _result(exact + rest, stderr, 2 * s + g, finite, method)


def _result(value, stderr, num_matvecs, finite, method) -> TraceResult:
    if check_finite_products(finite, lambda: f"trace, method={method!r}"):
        value, stderr = nan_unless(finite, value), nan_unless(finite, stderr)
    return TraceResult(value, stderr, jnp.asarray(num_matvecs, jnp.int32), finite)
