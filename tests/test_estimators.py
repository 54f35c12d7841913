"""Estimators against dense eigh, prescribed spectra and statistics; jit, vmap, retracing, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from core_problems import make_problem
from jax.flatten_util import ravel_pytree

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab import tree as tu


def _flat(t):
    return np.asarray(tu.ravel(t)[0])


def _sign_match(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return min(np.linalg.norm(a - b), np.linalg.norm(a + b))


@pytest.mark.parametrize(
    ("act", "loss"), [("tanh", "mse"), ("relu", "mse"), ("tanh", "xent"), ("relu", "xent")]
)
def test_lanczos_top5_bottom2_match_dense_eigh(act, loss, getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), act, loss, sizes=(4, 6, 5, 3))
    H = np.asarray(testing.dense_hessian(loss_fn, params, batch))
    evals, evecs = np.linalg.eigh(H)
    D = H.shape[0]
    op = hl.hvp(loss_fn, params, batch)
    v0 = tu.random_like(getkey(), params)
    top = jax.jit(lambda p, v: hl.top_eigs(hl.hvp(loss_fn, p, batch), v, k=5, num_iters=D))(
        params, v0
    )
    bot = hl.bottom_eigs(op, v0, k=2, num_iters=D)
    scale = np.max(np.abs(evals))
    np.testing.assert_allclose(top.values, evals[::-1][:5], rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(bot.values, evals[:2], rtol=1e-8, atol=1e-8 * scale)
    assert top.vectors["w"][0].shape == (5, 4, 6)  # pytree with a leading k axis
    assert int(top.num_matvecs) == D + 5  # the basis, then one product per residual
    for j in range(5):  # eigenvectors up to sign, where the eigenvalue is isolated
        gap = np.min(np.abs(np.delete(evals, D - 1 - j) - evals[D - 1 - j]))
        if gap > 1e-4 * scale:
            vec = jax.tree.map(lambda a, j=j: a[j], top.vectors)
            assert _sign_match(_flat(vec), evecs[:, D - 1 - j]) < 1e-6
    assert np.all(np.asarray(top.residuals) < 1e-8 * scale)


def test_lanczos_converges_with_a_partial_krylov_space(getkey):
    lam = np.concatenate([[10.0, 7.0, 5.0], np.linspace(-1.0, 1.0, 197)])
    A, Q = testing.prescribed_spectrum(getkey(), lam)
    res = hl.top_eigs(A, jax.random.normal(getkey(), (200,)), k=3, num_iters=40)
    np.testing.assert_allclose(res.values, [10.0, 7.0, 5.0], rtol=1e-10)
    assert _sign_match(res.vectors[0], Q[:, 0]) < 1e-6
    # the reported residual estimate is the true residual
    true = np.linalg.norm(A @ res.vectors[0] - res.values[0] * res.vectors[0])
    np.testing.assert_allclose(res.residuals[0], true, atol=1e-10)


def test_no_ghost_eigenvalues(getkey):
    """Without reorthogonalisation, Lanczos run long duplicates converged eigenvalues."""
    lam = np.concatenate([[100.0], np.linspace(0.0, 1.0, 99)])
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    res = hl.top_eigs(A, jnp.ones(100), k=3, num_iters=80)
    np.testing.assert_allclose(res.values[0], 100.0, rtol=1e-12)
    assert res.values[1] <= 1.0 + 1e-8  # no second copy of 100


def test_lanczos_restarts_past_an_invariant_krylov_space(getkey):
    """A start vector in a 3-dimensional invariant subspace: the Krylov space breaks down after
    3 steps, and Lanczos must continue from a fresh orthogonal vector to reach the rest."""
    lam = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0, -7.0])
    A, Q = testing.prescribed_spectrum(getkey(), lam)
    v0 = Q[:, 5] + Q[:, 6] + Q[:, 7]  # spans eigenvectors of 1, -1, -7 only
    top = hl.top_eigs(A, v0, k=5, num_iters=8)
    np.testing.assert_allclose(top.values, lam[:5], rtol=1e-10)
    assert _sign_match(top.vectors[0], Q[:, 0]) < 1e-8
    # the same under jit and vmap (where the restart branch runs as a select)
    v1 = jax.random.normal(getkey(), (8,))
    both = jax.jit(jax.vmap(lambda v: hl.bottom_eigs(A, v, k=8, num_iters=8).values))(
        jnp.stack([v0, v1])
    )
    np.testing.assert_allclose(both, np.stack([lam[::-1], lam[::-1]]), rtol=1e-10, atol=1e-12)
    # An exact breakdown: e_0 is an eigenvector of a diagonal matrix, so A q - alpha q is
    # exactly zero after one step and nothing but the restart can supply the next vector.
    D = jnp.diag(jnp.asarray(lam[::-1].copy()))
    with jax.debug_nans(True):  # no NaN anywhere, not even in a branch that is not taken
        exact = hl.top_eigs(D, jnp.eye(8)[0], k=8, num_iters=8)
        batched = jax.vmap(lambda v: hl.top_eigs(D, v, k=8, num_iters=8).values)(jnp.eye(8)[:2])
    np.testing.assert_allclose(exact.values, lam, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(batched, np.stack([lam, lam]), rtol=1e-10, atol=1e-12)
    assert float(exact.residuals.max()) < 1e-10


def test_lanczos_from_a_zero_start_vector_restarts_instead_of_returning_nans(getkey):
    """A zero start vector (possible under jit, where it cannot be rejected up front) is an
    immediate breakdown: Lanczos continues from its restart vector."""
    lam = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, -1.0, -7.0])
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    with jax.debug_nans(True):
        res = jax.jit(lambda v: hl.top_eigs(A, v, k=2, num_iters=8))(jnp.zeros(8))
    np.testing.assert_allclose(res.values, lam[:2], rtol=1e-10)


def test_unravel_inverts_ravel_for_leaves_of_mixed_shapes_and_dtypes(getkey):
    """tree.ravel's unravel agrees with jax.flatten_util for every leaf, batched or not."""
    k = jax.random.split(getkey(), 4)
    tree = {
        "a": jax.random.normal(k[0], (3, 4)),
        "b": [jax.random.normal(k[1], (4,)), jax.random.normal(k[2], (3, 4))],
        "c": jax.random.normal(k[3], (4,)).astype(jnp.float32),
        "d": jnp.zeros((0, 2)),
    }
    flat, unravel = tu.ravel(tree)
    ref_flat, ref_unravel = ravel_pytree(tree)
    np.testing.assert_array_equal(flat, ref_flat)
    x = jnp.arange(flat.size, dtype=flat.dtype) + 0.5
    for fn in (unravel, jax.jit(unravel)):
        got, want = fn(x), ref_unravel(x)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)
    # leading axes are kept, and vmap agrees
    X = jnp.stack([x, 2 * x, -x])
    for got in (unravel(X), jax.vmap(unravel)(X)):
        for g, w in zip(
            jax.tree.leaves(got), jax.tree.leaves(jax.vmap(ref_unravel)(X)), strict=True
        ):
            np.testing.assert_array_equal(g, w)
    with pytest.raises(ValueError, match="unravel: expected an array whose last axis has length"):
        unravel(x[:-1])


@pytest.mark.parametrize(("act", "loss"), [("tanh", "mse"), ("relu", "xent")])
def test_power_iteration_top_eigenvalue(act, loss, getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), act, loss)
    evals = np.linalg.eigvalsh(testing.dense_hessian(loss_fn, params, batch))
    res = jax.jit(lambda p, v: hl.power_iteration(hl.hvp(loss_fn, p, batch), v, num_iters=3000))(
        params, tu.random_like(getkey(), params)
    )
    np.testing.assert_allclose(res.values[0], evals[-1], rtol=1e-6)


def test_power_iteration_deflation_top3(getkey):
    A, _ = testing.prescribed_spectrum(getkey(), [9.0, 6.0, 3.0, 1.0, 0.5, -2.0])
    res = hl.power_iteration(A, jnp.ones(6), num_iters=400, k=3)
    np.testing.assert_allclose(res.values, [9.0, 6.0, 3.0], rtol=1e-8)


def test_power_iteration_zero_and_zero_top_eigenvalue():
    # the zero operator has top eigenvalue 0 (not NaN); diag(0, -1, -2): phase one on A removes
    # the e_0 component exactly, so the shifted phase must restart from v0 to find the top 0
    for A, want in [(jnp.zeros((3, 3)), 0.0), (jnp.diag(jnp.array([0.0, -1.0, -2.0])), 0.0)]:
        res = hl.power_iteration(A, jnp.ones(3), num_iters=60)
        assert float(res.values[0]) == pytest.approx(want, abs=1e-6), (A, res)
        assert np.all(np.isfinite(res.vectors)) and float(res.residuals[0]) < 1e-5


def test_every_sharpness_estimator_returns_largest_algebraic_eigenvalue(getkey):
    lam = jnp.array([-10.0, -3.0, 0.5, 1.0, 2.0, 4.0])  # most negative has the largest magnitude
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    v0 = jax.random.normal(getkey(), (6,))
    assert float(hl.top_eigs(A, v0, k=1, num_iters=6).values[0]) == pytest.approx(4.0, rel=1e-10)
    assert float(hl.power_iteration(A, v0, num_iters=500).values[0]) == pytest.approx(4.0, rel=1e-6)
    ones = jnp.ones(6)
    res = hl.preconditioned_sharpness(lambda v: A @ v, ones, v0, k=1, num_iters=6)
    assert float(res.values[0]) == pytest.approx(4.0, rel=1e-10)
    # in pytree form too
    tree_op = lambda v: {"a": (A @ v["a"])}  # noqa: E731
    res = hl.top_eigs(tree_op, {"a": v0}, k=1, num_iters=6)
    assert float(res.values[0]) == pytest.approx(4.0, rel=1e-10)
    assert float(hl.bottom_eigs(A, v0, k=1, num_iters=6).values[0]) == pytest.approx(-10.0)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_trace_estimators_are_calibrated(method, getkey):
    lam = jnp.concatenate([jnp.array([5.0, 3.0, -2.0]), jnp.linspace(-0.5, 1.0, 37)])
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    keys = jax.random.split(getkey(), 400)
    est = jax.jit(jax.vmap(lambda k: hl.trace(A, k, 40, num_matvecs=15, method=method)))(keys)
    z = (np.asarray(est.value) - float(jnp.sum(lam))) / np.asarray(est.stderr)
    # t-statistics of an unbiased estimate with an honest standard error: about 95% of them
    # fall inside the 95% Student-t interval (residual probes: 15, or 15 - 2*5 for Hutch++)
    dof = (15 if method == "hutchinson" else 5) - 1
    inside = np.mean(np.abs(z) < scipy.stats.t.ppf(0.975, dof))
    assert abs(np.median(z)) < 0.2
    assert 0.90 < inside < 0.99
    assert int(est.num_matvecs[0]) == 15


def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum(getkey):
    lam = 1.0 / jnp.arange(1, 61) ** 2
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    keys = jax.random.split(getkey(), 200)
    err = {}
    for m in ("hutchinson", "hutchpp"):
        est = jax.vmap(lambda k, m=m: hl.trace(A, k, 60, num_matvecs=30, method=m).value)(keys)
        err[m] = float(jnp.sqrt(jnp.mean((est - jnp.sum(lam)) ** 2)))
    assert err["hutchpp"] < 0.5 * err["hutchinson"]


def test_trace_on_a_hessian_pytree(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    H = testing.dense_hessian(loss_fn, params, batch)
    est = hl.trace(hl.hvp(loss_fn, params, batch), getkey(), params, num_matvecs=200)
    assert abs(float(est.value) - float(jnp.trace(H))) < 4 * float(est.stderr)


def test_spectral_density_integrates_to_one_and_matches_moments(getkey):
    lam = jnp.concatenate([jnp.array([20.0, 12.0]), jax.random.uniform(getkey(), (98,)) - 0.3])
    A, _ = testing.prescribed_spectrum(getkey(), lam)
    d = 100
    keys = jax.random.split(getkey(), 64)
    res = jax.jit(
        jax.vmap(lambda k: hl.spectral_density(A, k, d, num_iters=25, num_probes=2, sigma=0.05))
    )(keys)
    mass = jax.vmap(jnp.trapezoid)(res.density, res.grid)
    np.testing.assert_allclose(mass, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sum(np.asarray(res.weights), axis=-1), 1.0, atol=1e-10)
    # quadrature moments: unbiased estimates of tr(A)/d and tr(A^2)/d
    m1 = np.sum(np.asarray(res.weights) * np.asarray(res.nodes), axis=-1).ravel()
    m2 = np.sum(np.asarray(res.weights) * np.asarray(res.nodes) ** 2, axis=-1).ravel()
    for m, exact in ((m1, jnp.sum(lam) / d), (m2, jnp.sum(lam**2) / d)):
        se = np.std(m, ddof=1) / np.sqrt(m.size)
        assert abs(np.mean(m) - float(exact)) < 4 * se
    # the broadened density's mean equals the quadrature mean
    dens_mean = jax.vmap(lambda g, p: jnp.trapezoid(g * p, g))(res.grid, res.density)
    np.testing.assert_allclose(dens_mean, m1.reshape(64, 2).mean(axis=1), atol=1e-6)


def test_ntk_trace_and_top_eig_match_dense(getkey):
    params, apply, _, _, (x, _) = make_problem(getkey(), n=7)
    K = np.asarray(testing.dense_ntk(apply, params, x)) / 7
    got = hl.ntk_trace(apply, params, x, chunk_size=3)
    np.testing.assert_allclose(got, np.trace(K), rtol=1e-10)
    got = hl.ntk_trace(apply, params, x, normalization="per_output")
    np.testing.assert_allclose(got, np.trace(K) / 2, rtol=1e-10)
    res = hl.ntk_top_eig(apply, params, x, k=2, num_iters=14)
    np.testing.assert_allclose(res.values, np.linalg.eigvalsh(K)[::-1][:2], rtol=1e-8)


def test_preconditioned_sharpness_matches_dense_p_inv_h_from_optax_state(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), "tanh", "mse")
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.01
    opt = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    state = opt.init(params)
    grad = jax.jit(jax.grad(loss_fn))
    for _ in range(3):
        updates, state = opt.update(grad(params, batch), state)
        params = optax.apply_updates(params, updates)
    g = grad(params, batch)
    P = hl.adam_preconditioner(state, g, b1=b1, b2=b2, eps=eps)
    # P is exactly what the next update applies: update = -lr * m_{t+1} / P
    next_update, _ = opt.update(g, state)
    m_next = jax.tree.map(lambda m, gg: b1 * m + (1 - b1) * gg, state[0].mu, g)
    expected = jax.tree.map(lambda m, p: -lr * m / p, m_next, P)
    np.testing.assert_allclose(_flat(next_update), _flat(expected), rtol=1e-10)
    # and the sharpness equals the dense top eigenvalue of P^-1 H (non-symmetric eig)
    H = np.asarray(testing.dense_hessian(loss_fn, params, batch))
    dense = np.max(np.linalg.eigvals(np.diag(1 / _flat(P)) @ H).real)
    D = H.shape[0]
    v0 = tu.random_like(getkey(), params)
    res = hl.preconditioned_sharpness(hl.hvp(loss_fn, params, batch), P, v0, num_iters=D)
    np.testing.assert_allclose(res.values[0], dense, rtol=1e-8)
    # a chunked operator
    n = jax.tree.leaves(batch)[0].shape[0]
    full = hl.full_data_hvp(loss_fn, params, batch, chunk_size=n // 2 + 1)
    res = hl.preconditioned_sharpness(full, P, v0, num_iters=D)
    np.testing.assert_allclose(res.values[0], dense, rtol=1e-8)


def test_adam_preconditioner_reads_injected_hyperparameters(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.1, b1=0.8, b2=0.99, eps=1e-6)
    state = opt.init(params)
    g = jax.grad(loss_fn)(params, batch)
    P = hl.adam_preconditioner(state, g)
    P_explicit = hl.adam_preconditioner(state, g, b1=0.8, b2=0.99, eps=1e-6)
    np.testing.assert_allclose(_flat(P), _flat(P_explicit))
    # first step: P = (1 - b1) (|g| + eps)
    np.testing.assert_allclose(_flat(P), 0.2 * (np.abs(_flat(g)) + 1e-6), rtol=1e-10)
    with pytest.raises(ValueError, match="b1"):
        hl.adam_preconditioner(optax.adam(0.1).init(params), g)
    with pytest.raises(ValueError, match="ScaleByAdamState"):
        hl.adam_preconditioner(optax.sgd(0.1).init(params), g, b1=0.9, b2=0.9, eps=0.0)


def test_estimators_vmap_over_matrices(getkey):
    spectra = jnp.stack([jnp.linspace(-1.0, s, 8) for s in (2.0, 3.0, 5.0)])
    As = jnp.stack([testing.prescribed_spectrum(getkey(), lam)[0] for lam in spectra])
    v0 = jnp.ones(8)
    top = jax.vmap(lambda A: hl.top_eigs(A, v0, k=2, num_iters=8).values)(As)
    np.testing.assert_allclose(top[:, 0], [2.0, 3.0, 5.0], rtol=1e-10)
    bot = jax.vmap(lambda A: hl.bottom_eigs(A, v0, k=1, num_iters=8).values)(As)
    np.testing.assert_allclose(bot[:, 0], -1.0, rtol=1e-10)
    pw = jax.vmap(lambda A: hl.power_iteration(A, v0, num_iters=800).values)(As)
    np.testing.assert_allclose(pw[:, 0], [2.0, 3.0, 5.0], rtol=1e-6)
    pc = jax.vmap(lambda A: hl.preconditioned_sharpness(lambda v: A @ v, 2 * v0, v0, num_iters=8))(
        As
    )
    np.testing.assert_allclose(pc.values[:, 0], [1.0, 1.5, 2.5], rtol=1e-10)
    key = getkey()
    # a sketch of D = 8 columns spans the space: Hutch++ is then exact
    tr = jax.vmap(lambda A: hl.trace(A, key, 8, num_matvecs=24, method="hutchpp").value)(As)
    np.testing.assert_allclose(tr, jnp.sum(spectra, axis=1), rtol=1e-8)
    dens = jax.vmap(lambda A: hl.spectral_density(A, key, 8, num_iters=8, num_probes=1))(As)
    assert dens.density.shape == (3, 512)


def test_jitted_estimator_does_not_retrace_for_new_parameter_values(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    traces = []

    @jax.jit
    def sharpness(p, v0):
        traces.append(None)
        return hl.top_eigs(hl.hvp(loss_fn, p, batch), v0, k=2, num_iters=10).values

    v0 = tu.random_like(getkey(), params)
    for i in range(4):
        p = jax.tree.map(lambda a, i=i: a * (1.0 + 0.1 * i), params)
        sharpness(p, v0).block_until_ready()
    assert len(traces) == 1


def _mismatched(params):
    return {"w": params["w"], "b": list(params["b"])}


def test_bad_input_raises_named_value_errors_before_tracing(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey())
    op = hl.hvp(loss_fn, params, batch)
    D = tu.ravel(params)[0].size
    v0 = tu.random_like(getkey(), params)
    traced = []

    def counting(v):
        traced.append(None)
        return op(v)

    for call, word in [
        (lambda: hl.top_eigs(counting, v0, k=D + 1, num_iters=D), "k"),
        (lambda: hl.top_eigs(counting, v0, k=5, num_iters=4), "num_iters"),
        (lambda: hl.top_eigs(counting, v0, k=1, num_iters=D + 1), "num_iters"),
        (lambda: hl.bottom_eigs(counting, v0, k=0), "k"),
        (lambda: hl.power_iteration(counting, v0, num_iters=1), "num_iters"),
        (lambda: hl.trace(counting, getkey(), v0, num_matvecs=1), "num_matvecs"),
        (lambda: hl.trace(counting, getkey(), v0, method="xtrace"), "method"),
        (lambda: hl.spectral_density(counting, getkey(), v0, sigma=-1.0), "sigma"),
        (lambda: hl.top_eigs(jnp.ones((3, 4)), jnp.ones(3)), "square"),
        (lambda: hl.top_eigs(jnp.eye(3), jnp.ones(4)), "v0"),
        (lambda: hl.top_eigs(counting, jax.tree.map(lambda a: a * jnp.nan, v0)), "finite"),
        (lambda: hl.ntk_trace(lambda p, x: x, params, batch[0], normalization="x"), "normaliz"),
    ]:
        with pytest.raises(ValueError, match=word):
            call()
    assert not traced  # every error came before the operator was touched
    with pytest.raises(ValueError, match="structure") as err:
        hl.top_eigs(op, _mismatched(params), k=1, num_iters=3)
    assert "PyTreeDef" in str(err.value)  # both trees shown
    with pytest.raises(ValueError, match="precond"):
        hl.preconditioned_sharpness(op, _mismatched(params), v0)
    neg = jax.tree.map(lambda a: -jnp.ones_like(a), params)
    with pytest.raises(ValueError, match="positive"):
        hl.preconditioned_sharpness(op, neg, v0)


def test_ntk_trace_and_preconditioned_sharpness_run_under_jit(getkey):
    params, apply, _, loss_fn, (x, y) = make_problem(getkey(), n=6)
    eager = hl.ntk_trace(apply, params, x, chunk_size=4)
    np.testing.assert_allclose(jax.jit(lambda p: hl.ntk_trace(apply, p, x))(params), eager)
    P = jax.tree.map(lambda a: jnp.full_like(a, 2.0), params)  # concrete, closed over
    v0 = tu.random_like(getkey(), params)
    f = jax.jit(
        lambda p: hl.preconditioned_sharpness(hl.hvp(loss_fn, p, (x, y)), P, v0, num_iters=8)
    )
    direct = hl.top_eigs(hl.hvp(loss_fn, params, (x, y)), v0, num_iters=8)
    np.testing.assert_allclose(f(params).values[0], direct.values[0] / 2, rtol=1e-10)
