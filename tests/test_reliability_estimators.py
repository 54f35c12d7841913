"""Bad inputs to the estimators: each is refused by name, flagged, or answered correctly.

Families: budgets, shapes and structures, dtypes, dense symmetry, non-finite inputs and products
(eager: raise; jit: flag), degenerate spectra, missed eigenvalues, honest residuals. References:
dense ``numpy.linalg.eigh`` and closed forms (prescribed spectra are built in numpy).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_lab as hl
from hessian_lab._matvec import flat_problem


def spectrum(lam, seed=0):
    """A symmetric matrix with eigenvalues ``lam`` (numpy: no compile per shape)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(lam), len(lam))))
    return jnp.asarray((q * np.asarray(lam)) @ q.T)


D = 6
LAM = np.array([4.0, 2.0, 1.0, 0.5, -1.0, -3.0])
A = spectrum(LAM)
V0 = jnp.ones(D)
KEY = jax.random.key(1)
TREE = {"w": jnp.ones((2, 2)), "b": (jnp.ones(2),)}  # D = 6 as a pytree


def tree_mv(v):
    """A symmetric operator on TREE-shaped pytrees: A applied to the flattened vector."""
    x = A @ jnp.concatenate([v["w"].ravel(), v["b"][0]])
    return {"w": x[:4].reshape(2, 2), "b": (x[4:],)}


def bad_mv(value):
    """``tree_mv`` with ``value`` (NaN or inf) added to every entry of every product."""
    return lambda v: jax.tree.map(lambda a: a + value, tree_mv(v))


NAN_MV, INF_MV = bad_mv(jnp.nan), bad_mv(jnp.inf)


NONSYM = jnp.asarray(np.triu(np.arange(36.0).reshape(6, 6)))
X2 = jnp.ones((2, 1))
PRODUCED = "matvec: produced"


def slq(op=A, like=D, **kw):
    return hl.spectral_density(op, KEY, like, **{"num_iters": 3, **kw})


def lin(p, x):
    return x * p


# (call, the name the message must start with)
BAD = {
    # budgets and options
    "k=0": (lambda: hl.top_eigs(A, V0, k=0, num_iters=3), "k:"),
    "k=True": (lambda: hl.top_eigs(A, V0, k=True, num_iters=3), "k:"),
    "k=1.0": (lambda: hl.bottom_eigs(A, V0, k=1.0, num_iters=3), "k:"),
    "k='2'": (lambda: hl.top_eigs(A, V0, k="2", num_iters=3), "k:"),
    "k>D": (lambda: hl.top_eigs(A, V0, k=D + 1, num_iters=D), "k:"),
    "num_iters<k": (lambda: hl.top_eigs(A, V0, k=3, num_iters=2), "num_iters:"),
    "num_iters>D": (lambda: hl.bottom_eigs(A, V0, num_iters=D + 1), "num_iters:"),
    "num_iters=None": (lambda: hl.top_eigs(A, V0, num_iters=None), "num_iters:"),
    "check_iters=-1": (lambda: hl.top_eigs(A, V0, k=2, num_iters=3, check_iters=-1), "check_"),
    "check_iters=True": (lambda: hl.top_eigs(A, V0, num_iters=3, check_iters=True), "check_"),
    "check_iters=2.0": (lambda: hl.bottom_eigs(A, V0, num_iters=3, check_iters=2.0), "check_"),
    "exact_residuals=1": (lambda: hl.top_eigs(A, V0, num_iters=3, exact_residuals=1), "exact_"),
    "exact_residuals='no'": (
        lambda: hl.bottom_eigs(A, V0, num_iters=3, exact_residuals="no"),
        "exact_residuals:",
    ),
    "power num_iters=1": (lambda: hl.power_iteration(A, V0, num_iters=1), "num_iters:"),
    "power k=0": (lambda: hl.power_iteration(A, V0, k=0), "k:"),
    "power k>D": (lambda: hl.power_iteration(A, V0, k=D + 1), "k:"),
    "power k=True": (lambda: hl.power_iteration(A, V0, k=True), "k:"),
    "trace num_matvecs=1": (lambda: hl.trace(A, KEY, D, num_matvecs=1), "num_matvecs:"),
    "hutchpp num_matvecs=5": (
        lambda: hl.trace(A, KEY, D, num_matvecs=5, method="hutchpp"),
        "num_matvecs:",
    ),
    "trace num_matvecs=2.0": (lambda: hl.trace(A, KEY, D, num_matvecs=2.0), "num_matvecs:"),
    "trace num_matvecs=2**31": (lambda: hl.trace(A, KEY, D, num_matvecs=2**31), "num_matvecs:"),
    "trace method": (lambda: hl.trace(A, KEY, D, method="xtrace"), "method:"),
    "trace key=0": (lambda: hl.trace(A, 0, D), "key:"),
    "trace key floats": (lambda: hl.trace(A, jnp.ones(2), D), "key:"),
    "trace like=True": (lambda: hl.trace(A, KEY, True), "like:"),
    "trace like=D+1": (lambda: hl.trace(A, KEY, D + 1), "like:"),
    "trace like=int, callable": (lambda: hl.trace(tree_mv, KEY, D), "like:"),
    "slq num_iters>D": (lambda: slq(num_iters=D + 1), "num_iters:"),
    "slq num_probes=0": (lambda: slq(num_probes=0), "num_probes:"),
    "slq num_points=1": (lambda: slq(num_points=1), "num_points:"),
    "slq sigma=nan": (lambda: slq(sigma=float("nan")), "sigma:"),
    "slq sigma=inf": (lambda: slq(sigma=float("inf")), "sigma:"),
    "slq sigma='x'": (lambda: slq(sigma="x"), "sigma:"),
    "slq grid 2-D": (lambda: slq(grid=jnp.ones((2, 2))), "grid:"),
    "slq grid NaN": (lambda: slq(grid=jnp.array([0.0, jnp.nan])), "grid:"),
    "slq key=None": (lambda: hl.spectral_density(A, None, D, num_iters=3), "key:"),
    # shapes and structures
    "dense not square": (
        lambda: hl.top_eigs(jnp.ones((3, 4)), jnp.ones(3), num_iters=3),
        "matvec:",
    ),
    "dense 1-D": (lambda: hl.top_eigs(jnp.ones(3), jnp.ones(3), num_iters=3), "matvec:"),
    "dense 3-D": (lambda: hl.trace(jnp.ones((2, 2, 2)), KEY, 2), "matvec:"),
    "v0 wrong length": (lambda: hl.top_eigs(A, jnp.ones(D + 1), num_iters=3), "v0:"),
    "v0 2-D": (lambda: hl.top_eigs(A, jnp.ones((D, 1)), num_iters=3), "v0:"),
    "v0 None": (lambda: hl.top_eigs(A, None, num_iters=3), "v0:"),
    "v0 a string, callable": (lambda: hl.top_eigs(tree_mv, "abc", num_iters=3), "v0:"),
    "v0 empty pytree": (lambda: hl.bottom_eigs(tree_mv, {}, num_iters=3), "v0:"),
    "dense 0 x 0": (lambda: hl.top_eigs(jnp.zeros((0, 0)), jnp.zeros(0), num_iters=3), "matvec:"),
    "trace key batch": (lambda: hl.trace(A, jax.random.split(KEY, 2), D), "key:"),
    "matvec a string": (lambda: hl.top_eigs("A", V0, num_iters=3), "matvec:"),
    "matvec a list": (lambda: hl.power_iteration([[1.0]], jnp.ones(1)), "matvec:"),
    "matvec wrong tree": (
        lambda: hl.top_eigs(lambda v: [v["w"], v["b"]], TREE, num_iters=3),
        "matvec:",
    ),
    "matvec wrong leaf shape": (
        lambda: hl.top_eigs(lambda v: {"w": v["w"].T[:1], "b": v["b"]}, TREE, num_iters=3),
        "matvec:",
    ),
    "matvec flat output": (lambda: hl.trace(lambda v: jnp.ones(6), KEY, TREE), "matvec:"),
    "matvec complex output": (lambda: hl.power_iteration(lambda v: v * 1j, jnp.ones(3)), "matvec:"),
    "matvec int output": (
        lambda: hl.spectral_density(lambda v: v.astype(jnp.int32), KEY, jnp.ones(3), num_iters=3),
        "matvec:",
    ),
    "ntk_top_eig k > n o": (lambda: hl.ntk_top_eig(lin, jnp.ones(()), X2, k=3), "k:"),
    "ntk_top_eig normalization": (
        lambda: hl.ntk_top_eig(lin, jnp.ones(()), X2, normalization=1),
        "normalization:",
    ),
    "ntk_top_eig NaN outputs": (
        lambda: hl.ntk_top_eig(lambda p, x: jnp.log(x - 2.0) * p, jnp.ones(()), X2, num_iters=2),
        "apply_fn:",
    ),
    "ntk_trace chunk_size=0": (
        lambda: hl.ntk_trace(lin, jnp.ones(()), X2, chunk_size=0),
        "chunk_size:",
    ),
    # dtypes
    "int v0, callable": (lambda: hl.top_eigs(tree_mv, jnp.ones(3, jnp.int32), num_iters=3), "v0:"),
    "int matrix and v0": (
        lambda: hl.top_eigs(jnp.eye(3, dtype=jnp.int32), jnp.ones(3, jnp.int32), num_iters=3),
        "matvec:",
    ),
    "complex matrix": (
        lambda: hl.top_eigs(jnp.eye(3) * (1 + 1j), jnp.ones(3), num_iters=3),
        "matvec:",
    ),
    "bool v0, callable": (lambda: hl.trace(tree_mv, KEY, jnp.ones(3, bool)), "like:"),
    # dense symmetry
    "triangular matrix": (lambda: hl.top_eigs(NONSYM, V0, num_iters=3), "matvec:"),
    "random matrix": (
        lambda: hl.power_iteration(np.random.default_rng(0).standard_normal((D, D)), V0),
        "matvec:",
    ),
    "nonsymmetric in trace": (lambda: hl.trace(NONSYM, KEY, D), "matvec:"),
    "nonsymmetric in slq": (lambda: hl.spectral_density(NONSYM, KEY, D, num_iters=3), "matvec:"),
    "nonsymmetric, closed over in jit": (
        lambda: jax.jit(lambda v: hl.top_eigs(NONSYM, v, num_iters=3).values)(V0),
        "matvec:",
    ),
    # non-finite inputs
    "NaN in v0": (lambda: hl.top_eigs(A, V0.at[2].set(jnp.nan), num_iters=3), "v0:"),
    "inf in v0 pytree": (
        lambda: hl.bottom_eigs(
            tree_mv, {**TREE, "w": TREE["w"].at[0, 0].set(jnp.inf)}, num_iters=3
        ),
        "v0:",
    ),
    "NaN in power v0": (lambda: hl.power_iteration(A, V0 * jnp.nan), "v0:"),
    "NaN in dense matrix": (
        lambda: hl.top_eigs(A.at[0, 0].set(jnp.nan), V0, num_iters=3),
        "matvec:",
    ),
    "inf in dense matrix, trace": (lambda: hl.trace(A.at[1, 1].set(jnp.inf), KEY, D), "matvec:"),
    "NaN in ntk x": (lambda: hl.ntk_trace(lin, jnp.ones(()), X2 * jnp.nan), "x:"),
    # non-finite products, eagerly
    "NaN product, top_eigs": (lambda: hl.top_eigs(NAN_MV, TREE, num_iters=3), PRODUCED),
    "NaN product, power": (lambda: hl.power_iteration(NAN_MV, TREE, num_iters=4), PRODUCED),
    "NaN product, hutchinson": (lambda: hl.trace(NAN_MV, KEY, TREE, num_matvecs=3), PRODUCED),
    "inf, hutchpp": (
        lambda: hl.trace(INF_MV, KEY, TREE, num_matvecs=6, method="hutchpp"),
        PRODUCED,
    ),
    "NaN product, slq": (lambda: slq(NAN_MV, TREE, num_probes=1), PRODUCED),
    "NaN only for some inputs": (
        lambda: hl.top_eigs(lambda v: jnp.where(v[0] > 0.1, A @ v, jnp.nan), V0, num_iters=4),
        PRODUCED,
    ),
    "NaN ntk outputs": (
        lambda: hl.ntk_trace(lambda p, x: x * p * jnp.nan, jnp.ones(()), jnp.ones((2, 1))),
        "apply_fn: produced",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_by_name(case):
    call, prefix = BAD[case]
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(prefix), msg
    assert "\n" not in msg or "pytree" in msg  # one line, except where two trees are shown


def test_wrong_tree_error_shows_both_structures():
    with pytest.raises(ValueError, match="matvec: must return") as err:
        hl.top_eigs(lambda v: [v["w"], v["b"]], TREE, num_iters=3)
    assert str(err.value).count("PyTreeDef") == 2


def test_matrices_symmetric_up_to_rounding_are_accepted():
    rng = np.random.default_rng(0)
    B = jnp.asarray(rng.standard_normal((D, D)), jnp.float32)
    X = jnp.asarray(rng.standard_normal((20, D)), jnp.float32)
    # TF32-like rounding (1e-4 relative asymmetry), as a GPU matmul leaves it
    tf32 = (B + B.T) / 2 + 1e-4 * jnp.max(jnp.abs(B)) * jnp.triu(jnp.ones((D, D), B.dtype), 1)
    v = jnp.ones(D, jnp.float32)
    for M in ((B + B.T) / 2, X.T @ X, tf32):
        flat_problem(M, v)  # the check alone, without running an estimator
    # a traced matrix cannot be inspected (documented): it runs, on its symmetric part's behalf
    out = jax.jit(lambda M: hl.top_eigs(M, V0, num_iters=3).finite)(NONSYM)
    assert bool(out)


def test_array_likes_and_half_precision_work_in_float32():
    # float16 (LAPACK has no float16 eigh) runs in float32; a list is a start vector for a dense
    # matrix
    A16 = jnp.asarray(np.diag(LAM), jnp.float16)
    r16, rlist = jax.jit(
        lambda: (
            hl.top_eigs(A16, jnp.ones(D, jnp.float16), k=2, num_iters=D),
            hl.top_eigs(A, [1.0] * D, k=2, num_iters=D),
        )
    )()
    assert r16.values.dtype == jnp.float32
    np.testing.assert_allclose(r16.values, LAM[:2], rtol=1e-6)
    np.testing.assert_allclose(rlist.values, LAM[:2], rtol=1e-10)


def test_non_finite_products_under_jit_are_flagged_with_nan_results():
    @jax.jit
    def run(scale):
        mv = lambda v: jax.tree.map(lambda a: a * scale, tree_mv(v))  # noqa: E731
        return (
            hl.top_eigs(mv, TREE, k=2, num_iters=4),
            hl.power_iteration(mv, TREE, num_iters=3),
            hl.trace(mv, KEY, TREE, num_matvecs=6, method="hutchpp"),
            hl.spectral_density(mv, KEY, TREE, num_iters=3, num_probes=1, num_points=8),
        )

    good, bad = run(1.0), run(jnp.nan)
    for r in good:
        assert bool(r.finite)
    top, power, tr, sd = bad
    for r in (top, power):
        assert not bool(r.finite) and not bool(r.missed)
        assert np.all(np.isnan(r.values)) and np.all(np.isnan(r.residuals))
        assert np.all(np.isnan(r.vectors["w"]))
    assert not bool(tr.finite) and np.isnan(tr.value) and np.isnan(tr.stderr)
    assert not bool(sd.finite) and np.all(np.isnan(sd.density))
    ntk = jax.jit(lambda s: hl.ntk_trace(lambda p, x: x * p * s, jnp.ones(()), jnp.ones((2, 1))))
    assert np.isnan(ntk(jnp.inf)) and float(ntk(1.0)) == pytest.approx(1.0)
    # positional construction (results built elsewhere) still works: the flags have defaults
    assert hl.EigResult(1, 2, 3, 4).finite and not hl.EigResult(1, 2, 3, 4).missed
    assert hl.TraceResult(1, 2, 3).finite and hl.DensityResult(1, 2, 3, 4, 5).finite


@jax.jit
def _degenerate(Z, N):
    top = hl.top_eigs(Z, V0, k=2, num_iters=3)  # with the check (k = 2)
    hutchpp = hl.trace(Z, KEY, D, num_matvecs=6, method="hutchpp").value
    density = hl.spectral_density(Z, KEY, D, num_iters=2, num_points=8).density
    power_n = jax.vmap(lambda M: hl.power_iteration(M, V0, num_iters=400).values[0])(N)
    return top, hutchpp, density, power_n


def test_zero_operator_and_negative_dominant_spectra():
    Z = jnp.zeros((D, D))
    # power iteration finds the largest *algebraic* value: -30 dominates in magnitude but is not
    # the top; in the second and third matrices every eigenvalue is negative or zero
    N = jnp.stack(
        [
            jnp.diag(jnp.array([-30.0, -20.0, 1.0, 2.0, -5.0, 0.0])),
            jnp.diag(-jnp.arange(1.0, 7.0)),
            Z.at[0, 0].set(-1.0),
        ]
    )
    top, hutchpp, density, power_n = _degenerate(Z, N)
    np.testing.assert_array_equal(top.values, 0.0)
    np.testing.assert_array_equal(top.residuals, 0.0)
    assert bool(top.finite) and not bool(top.missed)
    assert float(hutchpp) == 0.0 and np.all(np.isfinite(density))
    np.testing.assert_allclose(power_n, [2.0, -1.0, 0.0], rtol=1e-6, atol=1e-9)


def test_power_iteration_zero_start_and_start_in_the_deflated_span():
    w, Q = np.linalg.eigh(np.asarray(A))

    @jax.jit
    def run(zero, top):
        # a zero v0 (possible under jit) starts from the uniform vector; v0 = the top
        # eigenvector leaves nothing after deflating it: the second pair restarts
        return (
            hl.power_iteration(A, zero, num_iters=300),
            hl.power_iteration(A, top, num_iters=300, k=2),
        )

    with jax.debug_nans(True):
        r0, r = run(jnp.zeros(D), jnp.asarray(Q[:, -1]))
    np.testing.assert_allclose(r0.values, [w[-1]], rtol=1e-8)
    np.testing.assert_allclose(r.values, w[::-1][:2], rtol=1e-7)
    # residuals are the true ||A y - lambda y|| of the returned pairs, deflated ones included
    Y = np.asarray(r.vectors)
    true = np.linalg.norm(Y @ np.asarray(A) - np.asarray(r.values)[:, None] * Y, axis=1)
    np.testing.assert_allclose(r.residuals, true, rtol=1e-6, atol=1e-12)


def test_repeated_eigenvalue_beyond_one_copy_is_flagged():
    lam = np.concatenate([[5.0, 5.0, 5.0], np.linspace(-1.0, 1.0, 37)])
    M = spectrum(lam, 3)
    v = jax.random.normal(jax.random.key(4), (40,))

    @jax.jit
    def run(M):
        r3 = hl.top_eigs(M, v, k=3, num_iters=20)
        # k = 1 is right (5 is the top), so not checked by default; with a check it is a tie
        r1 = hl.top_eigs(M, v, k=1, num_iters=20, check_iters=4)
        # the mirror image for bottom_eigs, under vmap
        bottom = jax.vmap(lambda s: hl.bottom_eigs(s * M, v, k=3, num_iters=20).missed)(
            jnp.array([-1.0, 1.0])
        )
        return r3, r1, bottom

    r3, r1, bottom = run(M)
    assert bool(r3.missed) and float(r3.values[-1]) < 5.0 - 1e-3  # one copy, then the rest
    assert int(r3.num_matvecs) == 20 + 3 + 6  # basis, residuals, check (max(5, 2k))
    np.testing.assert_allclose(r1.values, [5.0], rtol=1e-10)
    assert not bool(r1.missed)
    np.testing.assert_array_equal(bottom, [True, False])


def test_a_direction_v0_cannot_reach_is_flagged():
    D3 = jnp.diag(jnp.array([1.0, 2.0, 3.0]))
    with pytest.warns(RuntimeWarning, match="top-1"):
        r = hl.top_eigs(D3, jnp.array([1.0, 1.0, 0.0]), k=1, num_iters=2, check_iters=1)
    assert float(r.values[0]) == pytest.approx(2.0) and bool(r.missed)
    assert int(r.num_matvecs) == 2 + 1 + 1
    # the whole space in the basis: the restart reaches 3 and there is nothing to check
    r = jax.jit(lambda v: hl.top_eigs(D3, v, k=1, num_iters=3, check_iters=5))(
        jnp.array([1.0, 1.0, 0.0])
    )
    assert float(r.values[0]) == pytest.approx(3.0) and not bool(r.missed)
    assert int(r.num_matvecs) == 3 + 1


def test_no_false_alarms_on_generic_spectra():
    """20 random spectra (k = 3, 20 steps, D = 40): flagged only where the k-th returned value
    is truly below the (k+1)-th eigenvalue, i.e. never on a correct answer."""
    rng = np.random.default_rng(5)
    spectra = [
        np.sort(np.concatenate([rng.uniform(3, 10, 3), rng.normal(0, 0.5, 37)]))[::-1]
        if i % 2
        else np.sort(1.0 / np.arange(1, 41) ** rng.uniform(0.5, 2))[::-1]
        for i in range(20)
    ]
    Ms = jnp.stack([spectrum(s, i) for i, s in enumerate(spectra)])
    r = jax.jit(jax.vmap(lambda M: hl.top_eigs(M, jnp.ones(40), k=3, num_iters=20)))(Ms)
    lam = np.stack(spectra)
    truly_missed = np.asarray(r.values)[:, -1] < lam[:, 3] - 1e-9
    assert not np.any(np.asarray(r.missed) & ~truly_missed)
    assert not np.any(truly_missed)  # these spectra converge: no alarm at all
    np.testing.assert_allclose(r.values, lam[:, :3], rtol=1e-6)


def test_float32_residuals_are_the_true_ones():
    """The issue's case: float32, PSD with eigenvalues 1e-8..1e8, a full Krylov space. The
    recurrence's estimate was 0 while the value was negative; the residual must be the true
    one and bound the error (a symmetric matrix has an eigenvalue within the residual)."""
    lam = np.logspace(-8, 8, 50)
    M = spectrum(lam).astype(jnp.float32)
    M = (M + M.T) / 2
    r = jax.jit(lambda M, v: hl.bottom_eigs(M, v, k=1, num_iters=50))(M, jnp.ones(50, M.dtype))
    y = np.asarray(r.vectors[0], np.float64)
    value = float(r.values[0])
    true = np.linalg.norm(np.asarray(M, np.float64) @ y - value * y)
    assert value < 0 < true  # a wrong value (the matrix is PSD) ...
    np.testing.assert_allclose(r.residuals[0], true, rtol=0.05)  # ... reported honestly
    assert np.min(np.abs(np.linalg.eigvalsh(np.asarray(M, np.float64)) - value)) <= float(
        r.residuals[0]
    )


def _dense_residuals(M, res):
    """float64 ``||M y - lambda y||`` of every returned pair."""
    Y = np.asarray(res.vectors, np.float64)
    return np.linalg.norm(np.asarray(M, np.float64) @ Y.T - Y.T * np.asarray(res.values), axis=0)


@pytest.mark.parametrize(
    "lam, m, k, fn",
    [
        (np.linspace(-3.0, 5.0, 40), 12, 1, hl.top_eigs),  # plain run
        (np.linspace(-3.0, 5.0, 40), 15, 3, hl.bottom_eigs),  # with the missed-value check
        (np.repeat([3.0, 1.0, -2.0], 10), 8, 2, hl.top_eigs),  # breakdowns: restart vectors
        (np.linspace(-1.0, 2.0, 12), 12, 2, hl.top_eigs),  # the whole space
    ],
)
def test_residuals_from_the_basis_are_the_true_ones(lam, m, k, fn):
    """``exact_residuals=False``: the same values and vectors, ``k`` products fewer, and the
    residuals of the dense float64 recomputation (to 1e-9, plus the documented allowance)."""
    M = spectrum(lam, seed=2)
    v0 = jnp.linspace(1.0, 2.0, len(lam))
    exact = fn(M, v0, k=k, num_iters=m)
    cheap = fn(M, v0, k=k, num_iters=m, exact_residuals=False)
    np.testing.assert_array_equal(cheap.values, exact.values)
    np.testing.assert_array_equal(cheap.vectors, exact.vectors)
    assert int(cheap.num_matvecs) == int(exact.num_matvecs) - k
    true = _dense_residuals(M, cheap)
    allowance = m**1.5 * np.finfo(np.float64).eps * np.max(np.abs(lam))
    assert np.all(np.asarray(cheap.residuals) >= true - 1e-12)
    np.testing.assert_allclose(cheap.residuals, true, rtol=1e-9, atol=2 * allowance)


def test_float32_residuals_from_the_basis_bound_the_true_ones():
    """float32: equal to the recomputed residual where it is well above rounding (a
    Hessian-like spectrum), an upper bound where it is not (the ill-conditioned case above:
    the wrong value is still within the reported residual of an eigenvalue)."""
    lam = np.concatenate([[10.0, 9.0, 7.5], np.linspace(-1.0, 2.0, 57)])
    M = spectrum(lam, seed=3).astype(jnp.float32)
    v0 = jnp.ones(60, jnp.float32)
    r = jax.jit(lambda M, v: hl.top_eigs(M, v, k=2, num_iters=8, exact_residuals=False))(M, v0)
    true = _dense_residuals(M, r)
    allowance = 8**1.5 * np.finfo(np.float32).eps * 10.0  # 10: the largest |eigenvalue|
    assert np.all(np.asarray(r.residuals) >= true)
    np.testing.assert_allclose(r.residuals, true, rtol=1e-3, atol=2 * allowance)
    lam = np.logspace(-8, 8, 50)
    M = spectrum(lam).astype(jnp.float32)
    M = (M + M.T) / 2
    r = hl.bottom_eigs(M, jnp.ones(50, M.dtype), k=1, num_iters=50, exact_residuals=False)
    assert float(r.residuals[0]) >= _dense_residuals(M, r)[0]
    gap = np.min(np.abs(np.linalg.eigvalsh(np.asarray(M, np.float64)) - float(r.values[0])))
    assert gap <= float(r.residuals[0])
