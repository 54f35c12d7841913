"""The batch-size study: TINY reproduces lambda_max(H_B) above lambda_max(H) and falling with B,
and an SGD slope above Adam's; the spectra against dense ``jax.hessian`` + ``eigh``; Adam's
second moment against an enumeration of every batch; the fits against exact power laws and
spiked curves; the kit's contract; bad configs refused by field."""

import itertools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import study_contract

from hessian_lab import population
from hessian_lab.studies import batch_size as bs
from hessian_lab.studies import batch_size_core as core
from hessian_lab.testing import dense_hessian


@pytest.fixture(scope="module")
def tiny():
    return bs.run(bs.TINY)


def test_tiny_batch_hessians_and_slopes(tiny, tmp_path):
    r = tiny
    lmax = r.lmax.mean(axis=(1, 2))
    lmin = r.lmin.mean(axis=(1, 2))
    # lambda_max(H_B) falls with B and stays above lambda_max(H); lambda_min mirrors it
    assert np.all(np.diff(lmax) < 0) and np.all(lmax > r.lmax_full.mean())
    assert np.all(np.diff(lmin) > 0) and np.all(lmin < r.lmin_full.mean()) and lmin[-1] < 0
    # E[H_B] = H and lambda_max is convex: per seed, the batch mean is above lambda_max(H)
    assert np.all(r.lmax.mean(axis=2) > r.lmax_full[None])
    assert np.all(np.isfinite(r.eta_sgd)) and np.all(np.isfinite(r.eta_adam))
    s = bs.summary(r)
    assert s["slope_sgd"] > s["slope_adam"] > 0
    assert s["spike_r2"] > 0.9 and s["spike"] > 0
    study_contract.check_dynamic(bs, r, tmp_path)


def test_tiny_spectra_match_dense_hessians(tiny):
    """TINY's Lanczos values against ``eigh`` of ``jax.hessian`` on the gathered batch."""
    r, c = tiny, tiny.config
    prob = core.make_problem(c)
    moment_fn = jax.jit(core.second_moment, static_argnums=0)
    for j, s, k in ((1, 0, 0), (1, 2, 3)):  # B = 8: one compiled dense Hessian
        b = int(r.batch_sizes[j])
        params = prob.model.init(population.member_keys(s)[0])
        rows = core.sample_batches(c.n_train, b, c.num_batches, c.seed)[k]
        batch = tuple(a[rows] for a in prob.data)
        H = np.asarray(dense_hessian(prob.loss_fn, params, batch), float)
        ev = np.linalg.eigvalsh(H)
        assert r.lmax[j, s, k] == pytest.approx(ev[-1], rel=1e-2)
        assert r.lmin[j, s, k] == pytest.approx(ev[0], rel=2e-2)
        moment = moment_fn(prob.loss_fn, params, prob.data, core.batch_noise(b, c.n_train))
        p = 1.0 / np.sqrt(np.sqrt(np.asarray(jax.flatten_util.ravel_pytree(moment)[0], float))
                          + c.adam_eps)  # fmt: skip
        pre = np.linalg.eigvalsh(p[:, None] * H * p[None, :])
        assert r.lpre[j, s, k] == pytest.approx(pre[-1], rel=1e-2)


def test_second_moment_is_the_mean_over_every_batch():
    prob = core.make_problem(
        bs.Config(n_train=8, depth=1, width=3, batch_sizes=(1, 8), fit_max_batch=8)
    )
    params = prob.model.init(jax.random.key(1))
    x, y = (a[:6] for a in prob.data)
    grad = jax.jit(jax.grad(prob.loss_fn))
    moment = jax.jit(core.second_moment, static_argnums=0)
    for b in (1, 2, 6):
        subsets = list(itertools.combinations(range(6), b))
        sq = [
            jax.tree.map(jnp.square, grad(params, (x[np.asarray(s)], y[np.asarray(s)])))
            for s in subsets
        ]
        want = jax.tree.map(lambda *a: sum(a) / len(a), *sq)
        got = moment(prob.loss_fn, params, (x, y), core.batch_noise(b, 6))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-9)


def test_fits_recover_exact_curves():
    b = np.array([1, 2, 4, 8, 16, 64])
    eta = np.stack([3.0 * b**0.7, 0.5 * b**0.4])  # two "seeds"
    np.testing.assert_allclose(core.loglog_slopes(b, eta, 16), [0.7, 0.4], rtol=1e-10)
    assert np.isnan(core.loglog_slopes(b, np.where(b > 1, np.nan, eta), 16)).all()
    cb = np.array([core.batch_noise(int(x), 64) for x in b])
    fit = core.spike_fit(b, 5.0 + 40.0 * cb, 64)
    assert fit["spike"] == pytest.approx(5.0) and fit["noise"] == pytest.approx(40.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert core.batch_noise(64, 64) == 0 and core.batch_noise(1, 64) == 1.0
    # t-interval of (1, 2, 3): mean 2, sd 1, t(0.975, 2) = 4.3027 (tables)
    m, lo, hi = core.t_interval([1.0, 2.0, 3.0, np.nan])
    assert m == 2.0 and hi - m == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert m - lo == pytest.approx(hi - m)
    assert core.adam_threshold(0.9) == pytest.approx(38.0)


def test_bad_configs_are_refused_by_field():
    for kw, field in (
        ({"batch_sizes": (8, 4, 512)}, "batch_sizes"),
        ({"batch_sizes": (1, 1024)}, "batch_sizes"),
        ({"fit_max_batch": 1}, "fit_max_batch"),
        ({"sgd_lr_range": (1.0, 0.5)}, "sgd_lr_range"),
        ({"adam_lr_range": (0.1,)}, "adam_lr_range"),
        ({"mode": "pmap"}, "mode"),
        ({"blowup": 1.0}, "blowup"),
        ({"adam_b1": 1.0}, "adam_b1"),
        ({"arch": "vit"}, "arch"),
        ({"lanczos_iters": 1}, "lanczos_iters"),
        ({"blowup": float("nan")}, "blowup"),
    ):
        with pytest.raises(ValueError, match=f"^{field}"):
            bs.Config(**kw)
    with pytest.raises(ValueError, match=r"^lanczos_iters"):
        bs.check_inputs(bs.Config(width=1, depth=1, lanczos_iters=10**6))
