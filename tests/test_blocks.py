"""Alignment with the top eigenspace, block operators, per-block spectra, Jensen-Shannon distances:
each against a dense reference (eigh of the Hessian or its sub-blocks, scipy's jensenshannon)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import make_problem
from scipy.spatial.distance import jensenshannon

import hessian_lab as hl
from hessian_lab import callbacks as cb
from hessian_lab import testing
from hessian_lab import tree as tu


def _leaf_slices(params):
    """Offsets of each leaf in ravel order (the dense Hessian's index order)."""
    out, start = {}, 0
    for path, leaf in zip(hl.leaf_paths(params), jax.tree.leaves(params), strict=True):
        out[path] = np.arange(start, start + leaf.size)
        start += leaf.size
    return out


def test_alignment_matches_the_projector_onto_dense_eigenvectors(getkey):
    A, _ = testing.prescribed_spectrum(getkey(), jnp.linspace(-3.0, 10.0, 30))
    g = jax.random.normal(getkey(), (30,), jnp.float64)
    v0 = jax.random.normal(getkey(), (30,), jnp.float64)
    w, U = np.linalg.eigh(np.asarray(A))
    for k in (1, 5):
        Uk = U[:, ::-1][:, :k]
        want = np.sum((Uk.T @ np.asarray(g)) ** 2) / np.sum(np.asarray(g) ** 2)
        r = hl.alignment(A, g, v0, k=k, num_iters=30)
        np.testing.assert_allclose(float(r.fraction), want, rtol=1e-9)
        np.testing.assert_allclose(np.asarray(r.values), w[::-1][:k], rtol=1e-9)
    # a vector inside the top-3 space is all there; one orthogonal to it, nothing
    inside = U[:, ::-1][:, :3] @ np.array([1.0, -2.0, 0.5])
    assert float(hl.alignment(A, jnp.asarray(inside), v0, k=3, num_iters=30).fraction) == (
        pytest.approx(1.0, abs=1e-10)
    )
    outside = U[:, 0]
    assert float(hl.alignment(A, jnp.asarray(outside), v0, k=3, num_iters=30).fraction) < 1e-12
    # jit-able, same numbers
    jitted = jax.jit(lambda g, v: hl.alignment(A, g, v, k=5, num_iters=30).fraction)(g, v0)
    np.testing.assert_allclose(float(jitted), float(r.fraction), rtol=1e-12)


def test_alignment_refuses_a_zero_or_mismatched_vector():
    A = jnp.diag(jnp.arange(1.0, 5.0))
    with pytest.raises(ValueError, match=r"^g: must be a non-zero"):
        hl.alignment(A, jnp.zeros(4), jnp.ones(4), k=1, num_iters=4)
    with pytest.raises(ValueError, match=r"^g"):
        hl.alignment(A, jnp.ones(3), jnp.ones(4), k=1, num_iters=4)
    with pytest.raises(ValueError, match=r"^g: must be finite"):
        hl.alignment(A, jnp.ones(4).at[0].set(jnp.nan), jnp.ones(4), k=1, num_iters=4)
    with pytest.raises(ValueError, match=r"^num_iters"):
        hl.alignment(A, jnp.ones(4), jnp.ones(4), k=2, num_iters=1)


def test_block_operator_is_the_dense_diagonal_block(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), "tanh", "xent", n=9)
    H = np.asarray(testing.dense_hessian(loss_fn, params, batch))
    slices = _leaf_slices(params)
    paths = ["['w'][1]", "['b'][1]"]
    op, block = hl.block_operator(hl.hvp(loss_fn, params, batch), params, paths)
    idx = np.concatenate([slices[p] for p in hl.leaf_paths(params) if p in paths])
    dense_block = np.asarray(testing.dense_operator(op, block))
    np.testing.assert_allclose(dense_block, H[np.ix_(idx, idx)], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"^paths: .*\['w'\]\[0\]"):
        hl.block_operator(op, params, ["['w'][7]"])


def test_block_spectra_top_values_and_densities_match_dense_blocks(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), "tanh", "mse", n=12)
    H = np.asarray(testing.dense_hessian(loss_fn, params, batch))
    slices = _leaf_slices(params)
    blocks = {"last layer": ["['w'][2]", "['b'][2]"]}
    res = hl.block_spectra(
        hl.hvp(loss_fn, params, batch), params, getkey(), blocks=blocks, k=2, num_iters=30
    )
    assert res.names == ("last layer",)
    for b, paths in enumerate(blocks.values()):
        idx = np.concatenate([slices[p] for p in paths])
        want = np.linalg.eigvalsh(H[np.ix_(idx, idx)])[::-1][:2]
        np.testing.assert_allclose(res.values[b], want, rtol=1e-8, atol=1e-12)
    mass = np.trapezoid(res.densities, res.grid, axis=1)
    np.testing.assert_allclose(mass, 1.0, atol=1e-3)
    # default: one block per leaf, named by its path; H = diag(1, 2 | 30, 40, 50) has two blocks
    # whose spectra differ (large JS distance), and a copy of a block is at distance 0
    quad = {"a": jnp.ones(2), "b": jnp.ones(3)}
    scale = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([30.0, 40.0, 50.0])}
    H_diag = lambda v: jax.tree.map(jnp.multiply, scale, v)  # noqa: E731
    per_leaf = hl.block_spectra(H_diag, quad, getkey(), k=2, num_iters=3)
    assert per_leaf.names == ("['a']", "['b']")
    np.testing.assert_allclose(per_leaf.values, [[2.0, 1.0], [50.0, 40.0]], rtol=1e-10)
    d = hl.js_distances(np.concatenate([per_leaf.densities, per_leaf.densities[:1]]))
    assert d[0, 1] > 0.99 and d[0, 2] < 1e-12 and np.allclose(d, d.T)
    with pytest.raises(ValueError, match=r"^k: must be at most the size 2"):
        hl.block_spectra(H_diag, quad, getkey(), blocks={"small": "['a']"}, k=3)
    with pytest.raises(ValueError, match=r"^blocks"):
        hl.block_spectra(H_diag, quad, getkey(), blocks=["['a']"])


def test_js_distances_match_scipy():
    rng = np.random.default_rng(0)
    p = rng.random((4, 50)) * (rng.random((4, 50)) > 0.3)
    d = hl.js_distances(p)
    for i in range(4):
        for j in range(4):
            np.testing.assert_allclose(d[i, j], jensenshannon(p[i], p[j], base=2), atol=1e-12)
    for bad in (
        np.array([1.0, 2.0]),
        np.array([[1.0, np.nan]]),
        np.array([[-1.0, 2.0]]),
        np.zeros((2, 3)),
    ):
        with pytest.raises(ValueError, match=r"^densities"):
            hl.js_distances(bad)


def test_alignment_callback_records_the_fraction_of_the_step_gradient(getkey):
    params, _, _, loss_fn, batch = make_problem(getkey(), "tanh", "mse", n=8)
    g = jax.grad(loss_fn)(params, batch)
    c = cb.alignment(loss_fn, every=1, k=2, num_iters=20)
    info = cb.StepInfo(jnp.asarray(0), params, grads=g, data=batch)
    _, metrics = cb.run_callbacks((c,), (c.init(params),), info)
    H = np.asarray(testing.dense_hessian(loss_fn, params, batch))
    w, U = np.linalg.eigh(H)
    flat_g = np.asarray(tu.to_flat(g))
    want = np.sum((U[:, ::-1][:, :2].T @ flat_g) ** 2) / np.sum(flat_g**2)
    np.testing.assert_allclose(float(metrics["alignment"]), want, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["alignment_sharpness"]), w[-1], rtol=1e-8)
