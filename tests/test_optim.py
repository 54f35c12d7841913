"""Optimizer factory: schedules as injected data, optax equivalence, GI-Adam, input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessian_lab import optim


def _params():
    return {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": (jnp.array([0.1, -0.3]),)}


def _grad(p):
    return jax.grad(lambda p: jnp.sum(jnp.sin(p["w"]) ** 2) + jnp.sum(p["b"][0] ** 3))(p)


def test_linear_warmup_values():
    s = optim.linear_warmup(0.01, 0.11, 10)
    for t, want in [(0, 0.01), (5, 0.06), (10, 0.11), (37, 0.11)]:
        assert float(s(t)) == pytest.approx(want, rel=1e-12)
    assert float(optim.constant(0.3)(1000)) == 0.3


def test_cosine_decay_values():
    s = optim.cosine_decay(1.0, 10, eta_final=0.1, warmup_steps=4, eta_init=0.2)
    assert float(s(2)) == pytest.approx(0.6)
    assert float(s(4)) == pytest.approx(1.0)
    assert float(s(9)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    assert float(s(14)) == pytest.approx(0.1)
    assert float(s(100)) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("name", "kw", "reference"),
    [
        ("gd", {}, optax.sgd(0.1)),
        ("momentum", {"momentum": 0.8}, optax.sgd(0.1, momentum=0.8)),
        ("nesterov", {"momentum": 0.8}, optax.sgd(0.1, momentum=0.8, nesterov=True)),
        ("adam", {"b2": 0.99}, optax.adam(0.1, b2=0.99)),
        ("adamw", {"weight_decay": 0.01}, optax.adamw(0.1, weight_decay=0.01)),
        ("rmsprop", {"decay": 0.95}, optax.rmsprop(0.1, decay=0.95)),
    ],
)
def test_matches_optax(name, kw, reference):
    opt = optim.make_optimizer(name, learning_rate=0.1, **kw)

    @jax.jit
    def run(p, q):
        s, r = opt.init(p), reference.init(q)
        for _ in range(4):
            u, s = opt.update(_grad(p), s, p)
            v, r = reference.update(_grad(q), r, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
        return p, q

    p, q = run(_params(), _params())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15), p, q)


def test_warmup_learning_rate_applied_per_update():
    opt = optim.make_optimizer("gd", learning_rate=optim.linear_warmup(0.0, 1.0, 4))
    p = {"w": jnp.ones(3)}
    s = opt.init(p)
    for t in range(6):
        assert float(optim.current_learning_rate(s)) == pytest.approx(min(t / 4, 1.0))
        u, s = opt.update({"w": jnp.ones(3)}, s, p)
        np.testing.assert_allclose(u["w"], -min(t / 4, 1.0) * jnp.ones(3))


def test_gi_adam_first_update_closed_form():
    # nu_0 = g0^2  =>  nu_1 = g0^2, nu_hat = g0^2 / (1 - b2), m_hat = g0:
    # u_1 = -eta g0 / (|g0| / sqrt(1 - b2) + eps).
    eta, b2, eps = 0.05, 0.99, 1e-8
    opt = optim.make_optimizer("gi_adam", learning_rate=eta, b2=b2, eps=eps)
    p = _params()
    g0 = _grad(p)
    u, s = opt.update(g0, opt.init(p), p)
    want = jax.tree.map(lambda g: -eta * g / (jnp.abs(g) / jnp.sqrt(1 - b2) + eps), g0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), u, want)
    # Second update: nu_2 = b2 g0^2 + (1 - b2) g1^2, both bias corrections kept.
    p1 = optax.apply_updates(p, u)
    g1 = _grad(p1)
    u2, _ = opt.update(g1, s, p1)
    m = jax.tree.map(lambda a, b: (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.9**2), g0, g1)
    nu = jax.tree.map(lambda a, b: (b2 * a**2 + (1 - b2) * b**2) / (1 - b2**2), g0, g1)
    want2 = jax.tree.map(lambda m, v: -eta * m / (jnp.sqrt(v) + eps), m, nu)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), u2, want2)


def test_gi_adam_init_sets_second_moment_and_is_kept():
    opt = optim.make_optimizer("gi_adam", learning_rate=0.1)
    p = _params()
    g0 = jax.tree.map(lambda x: 2 * x, _grad(p))
    s = optim.gi_adam_init(opt.init(p), g0)
    nu = s.inner_state[0].nu
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b**2), nu, g0)
    # The first update must keep the explicit nu_0 = g0^2, not replace it by g^2.
    g = _grad(p)
    u, _ = opt.update(g, s, p)
    want = jax.tree.map(
        lambda a, b: -0.1 * a / (jnp.sqrt(0.999 * b**2 + 0.001 * a**2) / jnp.sqrt(0.001) + 1e-8),
        g,
        g0,
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), u, want)
    with pytest.raises(ValueError, match="opt_state"):
        optim.gi_adam_init(optax.sgd(0.1).init(p), g0)


def test_adam_preconditioner_at_step_0_is_gi_adams_own():
    # GI-Adam's first update divides by sqrt(g0^2) (nu starts at g0^2), Adam's by sqrt(g0^2)
    # too after bias correction but with nu built from zero: the preconditioners differ by
    # 1/sqrt(1 - b2) at step 0. The preconditioner must be the one the next update applies.
    import hessian_lab as hl

    p = _params()
    g = _grad(p)
    b1, b2, eps = 0.9, 0.999, 1e-8
    gi = optim.make_optimizer("gi_adam", learning_rate=0.1)
    adam = optim.make_optimizer("adam", learning_rate=0.1)
    P_gi = hl.adam_preconditioner(gi.init(p), g)
    P_adam = hl.adam_preconditioner(adam.init(p), g)
    want_gi = jax.tree.map(lambda a: (1 - b1) * (jnp.abs(a) / jnp.sqrt(1 - b2) + eps), g)
    want_adam = jax.tree.map(lambda a: (1 - b1) * (jnp.abs(a) + eps), g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), P_gi, want_gi)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), P_adam, want_adam)
    # the same as reading it after an explicit gi_adam_init with g0 = g
    P_init = hl.adam_preconditioner(optim.gi_adam_init(gi.init(p), g), g)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), P_gi, P_init)
    # and the update GI-Adam applies is -eta m_hat / P-ish: -eta (1 - b1) g / P_gi
    u, s1 = gi.update(g, gi.init(p), p)
    jax.tree.map(
        lambda du, a, P: np.testing.assert_allclose(du, -0.1 * (1 - b1) * a / P, rtol=1e-10),
        u,
        g,
        P_gi,
    )
    assert isinstance(s1.inner_state[0], optim.ScaleByGIAdamState)


def test_hyperparams_change_without_retrace():
    traces = []
    opt = optim.make_optimizer("adam", learning_rate=optim.linear_warmup(0.01, 0.1, 5))

    @jax.jit
    def step(s, p):
        traces.append(1)
        return opt.update(_grad(p), s, p)

    p = _params()
    s = opt.init(p)
    for v in [0.1, 0.2, 0.3]:
        s2 = optim.set_hyperparams(
            s, {"learning_rate": v, "eta_init": v / 10, "b1": 0.5, "decay_steps": 3}
        )
        step(s2, p)
    assert len(traces) == 1
    with pytest.raises(ValueError, match="hyperparams"):
        optim.set_hyperparams(s, {"momentum": 0.9})


def test_current_learning_rate_without_injection_is_nan():
    assert np.isnan(float(optim.current_learning_rate(optax.sgd(0.1).init(_params()))))


@pytest.mark.parametrize(
    ("args", "kw", "match"),
    [
        (("sgd2",), {"learning_rate": 0.1}, "name"),
        (("gd",), {"learning_rate": 0.0}, "learning_rate"),
        (("gd",), {"learning_rate": -1.0}, "learning_rate"),
        (("gd",), {"learning_rate": float("nan")}, "learning_rate"),
        (("adam",), {"learning_rate": 0.1, "b1": 1.0}, "b1"),
        (("adam",), {"learning_rate": 0.1, "b2": -0.1}, "b2"),
        (("adam",), {"learning_rate": 0.1, "eps": -1e-8}, "eps"),
        (("momentum",), {"learning_rate": 0.1, "momentum": 1.5}, "momentum"),
        (("adamw",), {"learning_rate": 0.1, "weight_decay": -1.0}, "weight_decay"),
        (("gd",), {"learning_rate": 0.1, "b1": 0.9}, "b1"),
        (("gd",), {"learning_rate": optim.linear_warmup(-0.1, 1.0, 3)}, "learning_rate"),
        (("gd",), {"learning_rate": optim.linear_warmup(0.1, 1.0, -3)}, "learning_rate"),
    ],
)
def test_bad_hyperparameters(args, kw, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(*args, **kw)
