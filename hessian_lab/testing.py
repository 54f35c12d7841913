"""Dense references for tests: Hessian, GGN and NTK of small models, and prescribed spectra.

Everything here materialises ``D x D`` (or ``no x no``) matrices: use only on tiny problems, in
float64, as the oracle that matrix-free code is checked against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import tree as tu

__all__ = ["dense_ggn", "dense_hessian", "dense_ntk", "dense_operator", "prescribed_spectrum"]

PyTree = Any


def dense_hessian(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any):
    """Return the ``(D, D)`` Hessian of ``loss_fn(params, batch)`` over raveled params."""
    flat, unravel = tu.ravel(params)
    return jax.jit(jax.hessian(lambda w, b: loss_fn(unravel(w), b)))(flat, batch)


def _jacobian(apply_fn, params, x):
    flat, unravel = tu.ravel(params)
    out = apply_fn(params, x)
    J = jax.jit(jax.jacobian(lambda w, x: jnp.reshape(apply_fn(unravel(w), x), (-1,))))(flat, x)
    return J, out


def dense_ggn(apply_fn, output_loss, params: PyTree, x: Any, y: Any):
    """Return the dense GGN ``J^T H_out J`` over raveled params and flattened outputs."""
    J, out = _jacobian(apply_fn, params, x)
    H_out = jax.jit(jax.hessian(lambda o, y: output_loss(jnp.reshape(o, out.shape), y)))(
        jnp.ravel(out), y
    )
    return J.T @ H_out @ J


def dense_ntk(apply_fn, params: PyTree, x: Any):
    """Return the dense ``J J^T`` over flattened outputs (not normalised)."""
    J, _ = _jacobian(apply_fn, params, x)
    return J @ J.T


def dense_operator(matvec: Callable[[PyTree], PyTree], like: PyTree):
    """Materialise a pytree operator as a ``(D, D)`` matrix by applying it to basis vectors."""
    flat, unravel = tu.ravel(like)
    eye = jnp.eye(flat.shape[0], dtype=flat.dtype)
    return jax.jit(jax.vmap(lambda e: tu.ravel(matvec(unravel(e)))[0]))(eye).T


def prescribed_spectrum(key: jax.Array, eigenvalues: Sequence[float] | jax.Array, dtype=None):
    """Return ``(A, Q)``: a symmetric ``A = Q diag(eigenvalues) Q^T`` with random orthogonal Q.

    ``Q``'s columns are the eigenvectors. Q is the QR factor of a Gaussian matrix, sign-fixed
    so it is Haar distributed.
    """
    lam = jnp.asarray(eigenvalues, dtype=dtype)
    n = lam.shape[0]
    G = jax.random.normal(key, (n, n), lam.dtype)
    Q, R = jnp.linalg.qr(G)
    Q = Q * jnp.sign(jnp.diag(R))[None, :]
    return (Q * lam[None, :]) @ Q.T, Q
