"""Models: shapes under jit, parameterisation statistics, closed forms, input validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_lab import models

# Test inputs and statistics use numpy: every eager jnp op on a new shape costs a compilation.
RNG = np.random.default_rng(0)


def _unit_inputs(n, d):
    """Return ``n`` Gaussian inputs rescaled to ``|x|^2 / d = 1``."""
    x = RNG.normal(size=(n, d))
    return x * np.sqrt(d / np.sum(x**2, axis=1, keepdims=True))


def _outputs_over_seeds(net, key, x, num_seeds):
    """Return, as numpy, the outputs of ``num_seeds`` independent initialisations (one compile)."""
    keys = jax.random.split(key, num_seeds)
    return np.asarray(jax.jit(jax.vmap(lambda k: net.apply(net.init(k), x)))(keys))


_TRANSFORMER = models.transformer(9, context=10, d_model=16, num_layers=2, num_heads=2)
_TRANSFORMER_APPLY = jax.jit(_TRANSFORMER.apply)  # shared so its one compilation is reused


# --- shapes, jit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("net", "x", "shape"),
    [
        (models.mlp(5, 3, depth=2, width=16), np.ones((4, 5)), (4, 3)),
        (models.mlp(5, 3, depth=0, width=16, bias=False), np.ones((4, 5)), (4, 3)),
        (models.mlp(5, 1, depth=1, width=8, activation="tanh", param="mup"), np.ones((5,)), (1,)),
        (models.cnn((8, 8, 1), 10, depth=3, width=4), np.ones((2, 8, 8, 1)), (2, 10)),
        (models.cnn((6, 6, 3), 2, depth=5, width=4, param="ntk"), np.ones((6, 6, 3)), (2,)),
        (models.uv(3, 10), np.ones((7, 3)), (7, 1)),
        (models.uv(3, 10, 4, param="mup"), np.ones((7, 3)), (7, 4)),
        (_TRANSFORMER, np.zeros((2, 10), np.int32), (2, 10, 9)),
    ],
)
def test_model_runs_jitted_with_documented_shape(net, x, shape, getkey):
    params = net.init(getkey())
    assert isinstance(params, dict)
    apply = _TRANSFORMER_APPLY if net is _TRANSFORMER else jax.jit(net.apply)
    out = apply(params, x)
    assert out.shape == shape
    assert out.dtype == jnp.float64
    assert np.all(np.isfinite(out))


def test_mlp_and_uv_agree_jitted_and_eager(getkey):
    # (eager dispatch of the CNN and transformer is slow to warm up; their jit is the contract)
    for net, x in (
        (models.mlp(5, 3, depth=2, width=16), np.ones((4, 5))),
        (models.uv(3, 10), np.ones((7, 3))),
    ):
        params = net.init(getkey())
        np.testing.assert_allclose(jax.jit(net.apply)(params, x), net.apply(params, x), rtol=1e-12)


def test_mlp_params_structure_and_gradient(getkey):
    net = models.mlp(3, 2, depth=2, width=4)
    params = net.init(getkey())
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {
        "layers": [
            {"w": (3, 4), "b": (4,)},
            {"w": (4, 4), "b": (4,)},
            {"w": (4, 2), "b": (2,)},
        ]
    }
    x = np.ones((5, 3))
    g = jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2)))(params)
    # zero-initialised biases still receive gradients (multiplier 1, not sigma_b)
    assert np.abs(g["layers"][0]["b"]).sum() > 0


# --- parameterisations ---------------------------------------------------------------------------


@pytest.mark.parametrize("param", ["sp", "ntk"])
def test_preactivations_are_order_one_at_every_width(param, getkey):
    # With ReLU and sigma_w^2 = 2, E h_l^2 = sigma_w^2 |x|^2 / d = 2 at every layer and width.
    # A net with readout_scale = sigma_w and out_dim = width outputs h_{depth+1}, a pre-activation.
    x = _unit_inputs(16, 20)
    for width in (16, 64, 256):
        net = models.mlp(20, width, depth=2, width=width, param=param, readout_scale=math.sqrt(2))
        # the realised feature norm fluctuates like 1/sqrt(width) per net: average over nets
        h = _outputs_over_seeds(net, getkey(), x, 4096 // width)
        assert 1.7 < np.var(h) < 2.3, (width, np.var(h))


def test_init_statistics_per_parameterisation(getkey):
    width, in_dim = 256, 64
    for param in ("sp", "ntk", "mup"):
        net = models.mlp(in_dim, 8, depth=2, width=width, param=param, sigma_b=0.5, sigma_w=1.3)
        p = net.init(getkey())["layers"]
        var = [np.var(layer["w"]) for layer in p]
        if param == "sp":
            expected = [1.3**2 / in_dim, 1.3**2 / width, 1.0 / width]
        else:
            expected = [1.0, 1.0, 1.0]
        np.testing.assert_allclose(var, expected, rtol=0.1)
        np.testing.assert_allclose(np.var(p[1]["b"]), 0.25, rtol=0.4)


def test_sp_and_ntk_compute_the_same_function(getkey):
    # The NTK parameterisation is SP with W_sp = sigma_w W_ntk / sqrt(fan_in).
    sp = models.mlp(6, 3, depth=2, width=10, param="sp", sigma_w=1.7, readout_scale=0.8)
    ntk = models.mlp(6, 3, depth=2, width=10, param="ntk", sigma_w=1.7, readout_scale=0.8)
    p_ntk = ntk.init(getkey())
    fan_in, s = (6, 10, 10), (1.7, 1.7, 0.8)
    p_sp = {
        "layers": [
            {"w": si * lay["w"] / math.sqrt(m), "b": lay["b"]}
            for lay, m, si in zip(p_ntk["layers"], fan_in, s, strict=True)
        ]
    }
    x = RNG.normal(size=(4, 6))
    np.testing.assert_allclose(jax.jit(sp.apply)(p_sp, x), jax.jit(ntk.apply)(p_ntk, x), rtol=1e-12)


def test_mup_output_variance_scales_as_one_over_width(getkey):
    # Var f = readout_scale^2 E relu(h)^2 / width = 1 / width; 16 independent readout rows x 32 nets.
    x = _unit_inputs(8, 20)
    variances = []
    for width in (16, 64, 256):
        net = models.mlp(20, 16, depth=2, width=width, param="mup")
        f = _outputs_over_seeds(net, getkey(), x, 32)
        variances.append(np.var(f))
        assert 0.7 < width * variances[-1] < 1.4, (width, width * variances[-1])
    ratio = variances[0] / variances[-1]
    assert 16 / 1.6 < ratio < 16 * 1.6


def test_zero_readout_gives_zero_outputs(getkey):
    net = models.mlp(4, 3, depth=2, width=8, param="mup", zero_readout=True, sigma_b=1.0)
    p = net.init(getkey())
    assert np.abs(jax.jit(net.apply)(p, np.ones((2, 4)))).max() == 0.0
    assert np.abs(p["layers"][0]["b"]).max() > 0  # only the readout is zeroed
    cnn = models.cnn((4, 4, 1), 3, depth=2, width=4, zero_readout=True, sigma_b=1.0)
    readout = cnn.init(getkey())["readout"]
    assert np.abs(readout["w"]).max() == 0.0 and np.abs(readout["b"]).max() == 0.0


def test_cnn_output_scale_sp_and_mup(getkey):
    # SP: O(1) outputs at every width; muP: Var f ~ 1/width. (NTK has SP's forward statistics.)
    x = RNG.normal(size=(4, 8, 8, 3))
    v = {}
    for param in ("sp", "mup"):
        for width in (8, 64):
            net = models.cnn((8, 8, 3), 8, depth=2, width=width, param=param)
            v[param, width] = np.var(_outputs_over_seeds(net, getkey(), x, 8))
    assert all(0.02 < v["sp", w] < 5.0 for w in (8, 64)), v
    assert 0.25 < v["sp", 8] / v["sp", 64] < 4, v
    assert 8 / 2.5 < v["mup", 8] / v["mup", 64] < 8 * 2.5, v


# --- UV model ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("param", "mult"), [("ntp", lambda n: n**-0.5), ("mup", lambda n: 1 / n)])
def test_uv_matches_closed_form_and_ntk(param, mult, getkey):
    n = 50
    net = models.uv(1, n, param=param, init_scale=0.7)
    p = net.init(getkey())
    assert p["u"].shape == (n, 1) and p["v"].shape == (n,)
    x = np.array([[1.3]])
    u, v = np.asarray(p["u"]), np.asarray(p["v"])
    np.testing.assert_allclose(net.apply(p, x), [[mult(n) * v @ (u @ [1.3])]], rtol=1e-12)
    # NTK Theta = |df/dtheta|^2 = m^2 (|u x|^2 + |v|^2 |x|^2); for NTP that is (|u|^2+|v|^2)|x|^2/n.
    g = jax.jit(jax.grad(lambda q: net.apply(q, x)[0, 0]))(p)
    theta = sum(np.sum(np.asarray(leaf) ** 2) for leaf in jax.tree.leaves(g))
    expected = mult(n) ** 2 * (np.sum(u**2) + np.sum(v**2)) * 1.3**2
    np.testing.assert_allclose(theta, expected, rtol=1e-12)


def test_uv_init_statistics_and_output_scale(getkey):
    # f(x) = w . x with w = m u^T v; for x ~ N(0, I/d), Var_x f = |w|^2 / d, and averaging over u
    # gives E_u |w|^2 / d = m^2 s^2 |v|^2 (= s^4 for NTP and s^4 / n for muP, as E|v|^2 = n s^2).
    d, s = 512, 0.8
    x = RNG.normal(size=(2000, d)) / math.sqrt(d)
    cases = [
        ("ntp", lambda n: n**-0.5, 16),
        ("ntp", lambda n: n**-0.5, 256),
        ("mup", lambda n: 1 / n, 256),
    ]
    for param, m, n in cases:
        net = models.uv(d, n, param=param, init_scale=s)
        p = net.init(getkey())
        u, v = np.asarray(p["u"]), np.asarray(p["v"])
        np.testing.assert_allclose(np.std(u), s, rtol=0.05)
        if n == 256:
            np.testing.assert_allclose(np.std(v), s, rtol=0.15)
        w2 = np.sum((m(n) * u.T @ v) ** 2) / d
        np.testing.assert_allclose(np.var(jax.jit(net.apply)(p, x)), w2, rtol=0.1)
        assert 0.75 < w2 / (m(n) ** 2 * s**2 * np.sum(v**2)) < 1.25, (param, n)


# --- transformer ---------------------------------------------------------------------------------


def test_transformer_is_causal(getkey):
    p = _TRANSFORMER.init(getkey())
    x = RNG.integers(0, 9, size=(2, 10)).astype(np.int32)  # the dtype the shape test compiled
    x2 = x.copy()
    x2[:, 6] = (x[:, 6] + 1) % 9
    a, b = _TRANSFORMER_APPLY(p, x), _TRANSFORMER_APPLY(p, x2)
    np.testing.assert_allclose(a[:, :6], b[:, :6], rtol=1e-12, atol=1e-12)
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-6
    # a shorter sequence, unbatched, uses the first positions
    np.testing.assert_allclose(_TRANSFORMER_APPLY(p, x[0, :4]), a[0, :4], rtol=1e-10, atol=1e-12)


def test_transformer_rejects_bad_tokens():
    # checked before the params are touched, so none are needed
    with pytest.raises(ValueError, match="context=10"):
        _TRANSFORMER_APPLY(None, np.zeros((1, 11), np.int32))
    with pytest.raises(ValueError, match="integer"):
        _TRANSFORMER_APPLY(None, np.zeros((1, 3)))


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: models.mlp(3, 2, depth=1, width=4, activation="swish"), "activation.*relu"),
        (lambda: models.mlp(3, 2, depth=1, width=4, param="mf"), "param.*'mup'"),
        (lambda: models.mlp(3, 2, depth=1, width=0), "width"),
        (lambda: models.mlp(3, 2, depth=-1, width=4), "depth"),
        (lambda: models.mlp(3, 2, depth=1.5, width=4), "depth"),
        (lambda: models.mlp(0, 2, depth=1, width=4), "in_dim"),
        (lambda: models.mlp(3, 2, depth=1, width=4, sigma_w=-1.0), "sigma_w"),
        (lambda: models.mlp(3, 2, depth=1, width=4, readout_scale=float("nan")), "readout_scale"),
        (lambda: models.cnn((8, 8), 2, depth=1, width=4), "in_shape"),
        (lambda: models.cnn((8, 8, 1), 2, depth=0, width=4), "depth"),
        (lambda: models.cnn((8, 8, 1), 2, depth=2, width=4, activation="x"), "activation"),
        (lambda: models.uv(1, 10, param="sp"), "param.*'ntp'"),
        (lambda: models.uv(1, 0), "width"),
        (lambda: models.uv(1, 4, init_scale=-1), "init_scale"),
        (lambda: models.transformer(10, d_model=10, num_heads=3), "num_heads=3"),
        (lambda: models.transformer(0), "vocab"),
        (lambda: models.transformer(10, num_layers=0), "num_layers"),
    ],
)
def test_bad_arguments_raise_in_constructor(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_input_shape_raises():
    # checked at trace time, before the params are touched
    net = models.mlp(3, 2, depth=1, width=4)
    with pytest.raises(ValueError, match=r"x: must have shape \(\.\.\., 3\)"):
        jax.jit(net.apply)(None, np.ones((2, 4)))
    cnn = models.cnn((8, 8, 1), 2, depth=1, width=4)
    with pytest.raises(ValueError, match="x: must have shape"):
        cnn.apply(None, np.ones((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="x: must have shape"):
        models.uv(2, 4).apply(None, np.ones((3, 1)))
