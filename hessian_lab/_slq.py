"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a unit probe ``v``, ``m`` Lanczos steps give a Gauss quadrature rule: nodes ``theta_j`` (the
Ritz values) and weights ``tau_j = s_{1j}^2`` with ``v^T f(A) v ~ sum_j tau_j f(theta_j)``. With
``v`` uniform on the sphere, ``E[v^T f(A) v] = tr f(A) / D``, so averaging the rules over probes
estimates the normalised spectral measure ``(1/D) sum_i delta(t - lambda_i)``. Broadening each
node with a Gaussian of width ``sigma`` gives a density that integrates to 1, with mean
``tr(A)/D`` and second moment ``tr(A^2)/D + sigma^2`` in expectation (Ghorbani, Krishnan & Xiao
2019, arXiv 1901.10159; Lin, Saad & Yang 2016).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import tree as tu
from ._lanczos import tridiagonal_eigh, tridiagonalize
from ._matvec import (
    MAX_COUNT,
    check_finite_products,
    check_int,
    check_key,
    flat_problem,
    like_for,
    nan_unless,
)

__all__ = ["DensityResult", "spectral_density"]


class DensityResult(NamedTuple):
    """An estimated spectral density.

    Attributes:
      grid: ``(num_points,)`` evaluation points.
      density: ``(num_points,)`` density values; integrates to 1 over the grid.
      nodes: ``(num_probes, num_iters)`` quadrature nodes (Ritz values) per probe.
      weights: ``(num_probes, num_iters)`` quadrature weights per probe; each row sums to 1.
      num_matvecs: operator products used.
      finite: bool, True when every product was finite. Eagerly a non-finite product raises
        instead; under ``jit`` density, nodes and weights are then NaN.
    """

    grid: jax.Array
    density: jax.Array
    nodes: jax.Array
    weights: jax.Array
    num_matvecs: jax.Array
    finite: jax.Array = True


def spectral_density(
    matvec,
    key: jax.Array,
    like,
    /,
    *,
    num_iters: int = 30,
    num_probes: int = 4,
    num_points: int = 512,
    grid: jax.Array | None = None,
    sigma: float | None = None,
) -> DensityResult:
    """Estimate the spectral density of a symmetric operator by SLQ with Gaussian broadening.

    Args:
      matvec: operator on pytrees shaped like ``like``, or a dense ``(D, D)`` array.
      key: PRNG key for the probes.
      like: a vector with the operator's input shape (for a dense matrix: 1-D array or ``D``).
      num_iters: Lanczos steps per probe (``<= D``).
      num_probes: independent probes; cost ``num_iters * num_probes`` matvecs.
      num_points: grid size when ``grid`` is not given.
      grid: optional evaluation points; default spans the nodes plus ``5 sigma`` each side.
      sigma: Gaussian width; default 1% of the node range (at least a tiny positive floor).

    Returns:
      :class:`DensityResult`, with ``finite``.

    Raises:
      ValueError: a budget out of range, ``sigma`` not a positive finite number, ``grid`` not a
        1-D finite array, ``key`` not a PRNG key, ``like`` or ``matvec`` unusable (as in
        :func:`hessian_lab.top_eigs`). Called eagerly, also when a product is NaN or inf
        (under ``jit``: ``finite=False`` and NaN results).
    """
    check_key(key)
    like = like_for(matvec, like)
    prob = flat_problem(matvec, like, name="like")
    check_int(num_iters, "num_iters", 1, prob.dim)
    check_int(num_probes, "num_probes", 1, MAX_COUNT // num_iters)
    check_int(num_points, "num_points", 2)
    _check_sigma(sigma)
    if grid is not None:
        _check_grid(grid)

    def one_probe(k):
        v = jax.random.normal(k, (prob.dim,), prob.dtype)
        theta, S = tridiagonal_eigh(tridiagonalize(prob.mv, v, num_iters))
        return theta, S[0, :] ** 2

    nodes, weights = jax.lax.map(one_probe, jax.random.split(key, num_probes))
    # NaN or inf in a product reaches the tridiagonal, hence its eigenvalues: no extra reduction
    finite = jnp.all(jnp.isfinite(nodes)) & jnp.all(jnp.isfinite(weights))
    if check_finite_products(finite, lambda: "spectral_density"):
        nodes, weights = nan_unless(finite, nodes), nan_unless(finite, weights)
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.maximum(hi - lo, jnp.maximum(jnp.abs(hi), 1.0) * 1e-6)
    sig = width * 0.01 if sigma is None else jnp.asarray(sigma, prob.dtype)
    if grid is None:
        grid = jnp.linspace(lo - 5 * sig, hi + 5 * sig, num_points, dtype=prob.dtype)
    z = (grid[:, None, None] - nodes[None]) / sig
    kernel = jnp.exp(-0.5 * z**2) / (sig * jnp.sqrt(2 * jnp.pi))
    density = jnp.sum(kernel * weights[None], axis=(1, 2)) / num_probes
    count = jnp.asarray(num_iters * num_probes, jnp.int32)
    return DensityResult(grid, density, nodes, weights, count, finite)


def _is_real(x) -> bool:
    dtype = jnp.result_type(x)
    return jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)


def _check_sigma(sigma) -> None:
    if sigma is None or not tu.is_concrete(sigma):
        return  # a traced sigma cannot be inspected
    ok = not isinstance(sigma, bool | str) and jnp.ndim(sigma) == 0 and _is_real(sigma)
    if not (ok and 0 < float(sigma) < float("inf")):
        raise ValueError(f"sigma: must be a positive finite number, got {sigma!r}")


def _check_grid(grid) -> None:
    if jnp.ndim(grid) != 1 or jnp.shape(grid)[0] < 1 or not _is_real(grid):
        raise ValueError(
            f"grid: must be a non-empty 1-D array of real points, got shape {jnp.shape(grid)} "
            f"and dtype {jnp.result_type(grid)}"
        )
    tu.check_finite(grid, "grid")
