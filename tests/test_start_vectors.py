"""Start vectors cannot hide eigenvectors: a v0 exactly orthogonal to the top eigenvector (a zero
entry on a diagonal matrix) still finds it, because the estimators add a fixed 1e-3 generic
share to the start. Without it, both returned the second eigenvalue with a ~0 residual."""

import jax.numpy as jnp
import numpy as np

import hessian_lab as hl


def test_power_iteration_finds_a_top_eigenvector_the_start_is_orthogonal_to():
    # v0 has an exact zero on the top eigenvector: without a generic component in the start,
    # power iteration would converge, with a tiny residual, to the second eigenvalue (2).
    A = jnp.diag(jnp.array([1.0, 2.0, 3.0, 0.5, 0.25]))
    res = hl.power_iteration(A, jnp.array([1.0, 1.0, 0.0, 1.0, 1.0]), num_iters=60)
    np.testing.assert_allclose(float(res.values[0]), float(np.linalg.eigvalsh(A)[-1]), rtol=1e-6)


def test_lanczos_finds_a_top_eigenvector_the_start_is_orthogonal_to():
    # v0 = ones except an exact zero on the top eigenvector of a diagonal matrix: the Krylov
    # space of v0 alone never contains it (top_eigs returned lambda_2 with a ~0 residual); the
    # start's fixed 1e-3 generic share lets Lanczos reach it within the default budget.
    lam = np.linspace(0.0, 1.0, 40)
    lam[7] = 1.5
    v0 = np.ones(40)
    v0[7] = 0.0
    res = hl.top_eigs(jnp.diag(jnp.asarray(lam)), jnp.asarray(v0), k=1, num_iters=20)
    np.testing.assert_allclose(float(res.values[0]), 1.5, rtol=1e-6)
    res = hl.bottom_eigs(jnp.diag(-jnp.asarray(lam)), jnp.asarray(v0), k=1, num_iters=20)
    np.testing.assert_allclose(float(res.values[0]), -1.5, rtol=1e-6)
