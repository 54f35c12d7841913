"""The warmup study: catapult search vs 2/lambda0, GI-Adam's preconditioned sharpness, TINY run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure

from hessian_lab import models
from hessian_lab.losses import make_loss_fn
from hessian_lab.optim import gi_adam_init, make_optimizer
from hessian_lab.studies import _warmup_runs as wr
from hessian_lab.studies import warmup


@pytest.fixture(scope="module")
def tiny():
    return warmup.run(warmup.TINY)


def _dense_top(loss_fn, params, data):
    flat, unravel = ravel_pytree(params)
    hess = jax.hessian(lambda f: loss_fn(unravel(f), data))(flat)
    return float(jnp.linalg.eigvalsh(hess)[-1]), hess


def test_search_linear_regression_exact():
    # L = 1/(2n) |X w - y|^2: H = X^T X / n exactly, lambda0 its top eigenvalue.
    rng = np.random.default_rng(0)
    n, d = 64, 20
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, 1))
    net = models.mlp(d, 1, depth=0, width=1, bias=False)
    loss_fn = make_loss_fn(net.apply, "mse")
    p = net.init(jax.random.key(0))
    crit = 2 / np.linalg.eigvalsh(x.T @ x / n)[-1]
    ests = [warmup.catapult_search(loss_fn, p, (x, y), num_steps=k).eta for k in (1, 3, 20)]
    assert ests[0] > 1.2 * crit  # one step overestimates
    assert ests[0] > ests[1] > ests[2] >= crit * 0.99  # more steps converge from above
    assert abs(ests[2] / crit - 1) < 0.2


def test_search_uv_model_exact():
    # One example: lambda0 = Theta/2 + sqrt(Theta^2/4 + s2 (f - y)(3 f - y)) (exact, see uv_model).
    width = 32
    net = models.uv(1, width)
    p = net.init(jax.random.key(3))
    x, y = jnp.ones((1, 1)), jnp.full((1, 1), 1.0)
    loss_fn = make_loss_fn(net.apply, "mse")
    f = float(net.apply(p, x)[0, 0])
    theta = float(jnp.sum(p["u"] ** 2) + jnp.sum(p["v"] ** 2)) / width  # |x| = 1
    s2 = 1.0 / width
    lam0 = theta / 2 + np.sqrt(theta**2 / 4 + s2 * (f - 1.0) * (3 * f - 1.0))
    np.testing.assert_allclose(lam0, _dense_top(loss_fn, p, (x, y))[0], rtol=1e-10)
    est = warmup.catapult_search(loss_fn, p, (x, y), num_steps=20).eta
    assert abs(est * lam0 / 2 - 1) < 0.2


def test_search_small_mlp_against_lanczos():
    cfg = dataclasses.replace(warmup.TINY, n=32, width=32)
    data = wr.dataset(cfg)
    net, loss_fn = wr.model(cfg, "mup")  # small initial outputs: loss catapult at c = 2
    p = net.init(jax.random.key(1))
    lam0 = float(wr.sharpness_fn(loss_fn, 30)(p, data, jax.random.key(0)))
    np.testing.assert_allclose(lam0, _dense_top(loss_fn, p, data)[0], rtol=1e-6)
    est = warmup.catapult_search(loss_fn, p, data, num_steps=20, eta_min=1.0).eta
    assert abs(est * lam0 / 2 - 1) < 0.2


def test_search_rejects_bad_options():
    with pytest.raises(ValueError, match="growth"):
        warmup.catapult_search(lambda p, d: 0.0, {}, (), growth=1.0)
    with pytest.raises(ValueError, match="num_steps"):
        warmup.catapult_search(lambda p, d: 0.0, {}, (), num_steps=0)


def _gi_setup(activation, eps):
    net = models.mlp(5, 3, depth=1, width=6, activation=activation)
    loss_fn = make_loss_fn(net.apply, "mse")
    x = jax.random.normal(jax.random.key(1), (12, 5))
    y = jax.random.normal(jax.random.key(2), (12, 3))
    p = net.init(jax.random.key(0))
    opt = make_optimizer("adam", learning_rate=1e-3, b2=0.99, eps=eps)
    g0 = jax.grad(loss_fn)(p, (x, y))
    return loss_fn, p, (x, y), opt, g0


def test_gi_adam_preconditioned_sharpness_ratio_exact_at_eps0():
    # Adam:    v1 = (1-b2) g^2, v1/(1-b2) = g^2          -> P = (1-b1)(|g| + eps)
    # GI-Adam: v1 = b2 g^2 + (1-b2) g^2 = g^2            -> P = (1-b1)(|g|/sqrt(1-b2) + eps)
    # eps = 0: P_GI = P_Adam / sqrt(1-b2) exactly, so lambda(P^-1 H) shrinks by sqrt(1-b2).
    loss_fn, p, data, opt, g0 = _gi_setup("tanh", 0.0)
    assert all(bool(jnp.all(g != 0)) for g in jax.tree.leaves(g0))
    f = wr.precond_sharpness_fn(loss_fn, 25, 0.9, 0.99)
    adam = float(f(p, opt.init(p), data, 0.0, jax.random.key(0)))
    gi = float(f(p, gi_adam_init(opt.init(p), g0), data, 0.0, jax.random.key(0)))
    np.testing.assert_allclose(adam / gi, 1 / np.sqrt(1 - 0.99), rtol=1e-10)


def test_gi_adam_ratio_with_eps_matches_dense_and_bounds():
    eps = 1e-2  # large enough to matter: per coordinate r_i = (|g_i|/s + eps) / (|g_i| + eps)
    loss_fn, p, data, opt, g0 = _gi_setup("tanh", eps)
    s = np.sqrt(1 - 0.99)
    _, hess = _dense_top(loss_fn, p, data)
    g = np.abs(ravel_pytree(g0)[0])
    dense = []
    for scale in (1.0, 1 / s):
        pinv = 1 / np.sqrt(0.1 * (g * scale + eps))
        dense.append(np.linalg.eigvalsh(pinv[:, None] * np.asarray(hess) * pinv[None, :])[-1])
    f = wr.precond_sharpness_fn(loss_fn, 40, 0.9, 0.99)
    got = [float(f(p, st, data, eps, jax.random.key(0)))
           for st in (opt.init(p), gi_adam_init(opt.init(p), g0))]  # fmt: skip
    np.testing.assert_allclose(got, dense, rtol=1e-6)
    r = (g / s + eps) / (g + eps)
    ratio = got[0] / got[1]
    assert r.min() - 1e-9 <= ratio <= r.max() + 1e-9  # Rayleigh-quotient bound
    assert 1.0 < ratio < 1 / s


def test_library_gi_adam_matches_adam_from_gi_init():
    loss_fn, p, data, _, g0 = _gi_setup("tanh", 1e-8)
    a = make_optimizer("adam", learning_rate=1e-2)
    b = make_optimizer("gi_adam", learning_rate=1e-2)
    sa, sb = gi_adam_init(a.init(p), g0), b.init(p)
    pa = pb = p
    for _ in range(3):
        ua, sa = a.update(jax.grad(loss_fn)(pa, data), sa, pa)
        ub, sb = b.update(jax.grad(loss_fn)(pb, data), sb, pb)
        pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12)


def test_tiny_sp_sharpness_reduction_and_tracking(tiny):
    m = tiny.config.params.index("sp")
    s = tiny.traj_sharpness[m, 0]
    ok = np.isfinite(s)
    assert s[ok][-1] < 0.5 * tiny.lam0[m, 0]  # natural sharpness reduction
    eta_lam = (s * tiny.traj_lr[m, 0])[ok][-1]
    assert 1.0 < eta_lam < 4.0  # hovers near the stability edge 2/eta_t


def test_tiny_gi_ratio_and_results(tiny):
    sm = warmup.summary(tiny)
    assert abs(sm["gi_adam_precond_ratio"] / sm["expected_ratio_1_over_sqrt_1_minus_b2"] - 1) < 0.05
    assert np.all(tiny.search_estimate > 0)
    assert tiny.trainable.shape == tiny.diverged.shape


def test_tiny_round_trip_and_figures(tiny, tmp_path):
    warmup.save(tiny, tmp_path / "run")
    back = warmup.load(tmp_path / "run")
    assert back.config == tiny.config
    for f in dataclasses.fields(warmup.Results):
        if f.name != "config":
            a, b = getattr(tiny, f.name), getattr(back, f.name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    figs = warmup.figures(tiny)
    assert set(figs) == {"sharpness", "trainability", "catapult_search", "adam"}
    assert all(isinstance(f, Figure) for f in figs.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 0), ("params", ("ntk",)), ("c_max", 0.5), ("search_steps", (40,)), ("b2", 1.0),
     ("normalization", "mean"), ("trainable_fraction", 1.5)],
)  # fmt: skip
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(warmup.TINY, **{field: value})
