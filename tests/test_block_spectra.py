"""The block-spectra study: the masked block Lanczos against dense references (a quadratic whose
blocks are known exactly, and the dense Hessian of the TINY transformer), the science of TINY
(the transformer's blocks more heterogeneous than the MLP's), the kit's contract, and bad configs
refused by field. hl.js_distances itself is checked against scipy in test_blocks.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import study_contract

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab.studies import block_spectra as bs
from hessian_lab.studies import block_spectra_core as core


@pytest.fixture(scope="module")
def tiny():
    return bs.run(bs.TINY)


def _slices(params):
    """Index ranges of each leaf in ravel order (the dense Hessian's order)."""
    out, start = {}, 0
    for path, leaf in zip(hl.leaf_paths(params), jax.tree.leaves(params), strict=True):
        out[path] = np.arange(start, start + leaf.size)
        start += leaf.size
    return out


def test_masked_lanczos_is_exact_on_a_quadratic_with_coupled_blocks(getkey):
    # L = p^T A p / 2 with A dense (the blocks coupled): each block's operator is A_bb alone
    params = {"a": jnp.zeros((2, 3)), "b": jnp.zeros((3, 2)), "c": jnp.zeros(4)}
    A, _ = testing.prescribed_spectrum(getkey(), jnp.linspace(-2.0, 9.0, 16))
    loss = lambda p, _: 0.5 * hl.tree.to_flat(p) @ A @ hl.tree.to_flat(p)  # noqa: E731
    names, masks = core.matrix_blocks(params, matrices_only=True)
    assert names == ["['a']", "['b']"]
    sp = core.masked_spectra(loss, params, None, masks, getkey(), k=2, num_iters=6, num_probes=3)
    idx = _slices(params)
    for b, name in enumerate(names):
        want = np.linalg.eigvalsh(np.asarray(A)[np.ix_(idx[name], idx[name])])
        np.testing.assert_allclose(sp.values[b], want[::-1][:2], rtol=1e-10, atol=1e-12)
        assert np.all(sp.residuals[b] < 1e-8)
        # a full Krylov space per probe: its Ritz values are the block's eigenvalues
        for probe in sp.nodes[b].reshape(3, 6):
            np.testing.assert_allclose(np.sort(probe), want, rtol=1e-10, atol=1e-12)
        assert np.all(sp.weights[b] >= 0) and sp.weights[b].sum() == pytest.approx(1.0)
    grid, dens = core.densities(sp.nodes, sp.weights, 400)
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, atol=1e-3)
    # normalize="top": each block's nodes over its top eigenvalue, so the grid ends at 1 + 5 sigma
    grid, dens = core.densities(sp.nodes, sp.weights, 400, width=0.02, scale=sp.values[:, 0])
    lo = min(
        np.linalg.eigvalsh(np.asarray(A)[np.ix_(idx[n], idx[n])])[0] / sp.values[b, 0]
        for b, n in enumerate(names)
    )
    sigma = 0.02 * (1 - lo)
    np.testing.assert_allclose([grid[0], grid[-1]], [lo - 5 * sigma, 1 + 5 * sigma], rtol=1e-9)
    np.testing.assert_allclose(np.trapezoid(dens, grid, axis=1), 1.0, atol=1e-3)


def test_tiny_top_eigenvalues_match_the_dense_transformer_hessian_blocks(tiny):
    c = tiny.config
    prob = core.make_problem("transformer", c)
    params = prob.model.init(jax.random.key(c.seed))
    H = np.asarray(testing.dense_hessian(prob.loss_fn, params, prob.data))
    idx = _slices(params)
    rows = np.flatnonzero(tiny.block_arch == "transformer")
    assert rows.size == 9  # 1 layer: embed, pos, wq, wk, wv, wo, w1, w2, unembed
    for b in rows:
        i = idx[str(tiny.block_names[b])]
        want = np.linalg.eigvalsh(H[np.ix_(i, i)])[::-1][: c.k]
        ours, res = tiny.values[b], tiny.residuals[b]
        # Ritz values of a symmetric block lie below its top and within a residual of an
        # eigenvalue; after 12 steps the top one is converged to 5e-5 or better (seed 0)
        assert ours[0] <= want[0] * (1 + 1e-9) + 1e-12
        np.testing.assert_allclose(ours[0], want[0], rtol=1e-3)
        assert ours[0] >= want[0] - res[0] - 1e-9
        # the SLQ nodes stay inside the block's spectrum (Cauchy interlacing): no leak outside
        lo, hi = np.linalg.eigvalsh(H[np.ix_(i, i)])[[0, -1]]
        assert np.all(tiny.nodes[b] >= lo - 1e-9) and np.all(tiny.nodes[b] <= hi + 1e-9)


def test_tiny_transformer_blocks_are_more_heterogeneous_than_the_mlps(tiny, tmp_path):
    r = tiny
    js = dict(zip(r.archs, r.mean_js, strict=True))
    # TINY's 1-layer, width-8 transformer is less heterogeneous than DEFAULT's (ratio 1.3-2.0
    # over seeds 0-2, against the study's 1.5 for "clearly"): a looser margin here
    assert js["transformer"] >= 1.25 * js["mlp"]
    assert bs.verdict(r)[0].startswith("transformer's mean JS distance")
    for arch in r.archs:
        rows = np.flatnonzero(r.block_arch == arch)
        d = r.js[np.ix_(rows, rows)]
        np.testing.assert_allclose(d, hl.js_distances(r.densities[rows]), atol=1e-12)
        assert np.all(np.diag(d) == 0) and np.all((d >= 0) & (d <= 1))
    # cross-entropy at a near-uniform initial prediction: about log(classes)
    assert r.initial_loss[0] == pytest.approx(np.log(r.config.vocab), rel=0.5)
    assert r.initial_loss[1] == pytest.approx(np.log(10), rel=0.5)
    study_contract.check_dynamic(bs, r, tmp_path)


def test_bad_configs_are_refused_by_field():
    for kw, field in (
        ({"archs": ()}, "archs"),
        ({"archs": ("transformer", "rnn")}, "archs"),
        ({"sequences": "text"}, "sequences"),
        ({"num_heads": 3}, "num_heads"),
        ({"vocab": 2}, "vocab"),
        ({"k": 50}, "k"),
        ({"n_digits": 5000}, "n_digits"),
        ({"num_probes": 0}, "num_probes"),
        ({"density_width": 0.0}, "density_width"),
        ({"density_width": float("nan")}, "density_width"),
        ({"normalize": "max"}, "normalize"),
    ):
        with pytest.raises(ValueError, match=f"^{field}"):
            bs.Config(**kw)
    with pytest.raises(ValueError, match=r"^num_iters"):
        bs.check_inputs(bs.Config(d_model=4, num_heads=2, num_iters=40))  # wq is 4 x 4
