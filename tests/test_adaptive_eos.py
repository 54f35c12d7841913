"""The adaptive-EoS study: RMSProp / frozen preconditioners against optax, the TINY run, I/O."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from matplotlib.figure import Figure

import hessian_lab as hl
from hessian_lab.optim import make_optimizer
from hessian_lab.studies import adaptive_eos as ae


@pytest.fixture(scope="module")
def tiny():
    return ae.run(ae.TINY)


def _tree(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (3, 2)), "b": (jax.random.normal(k2, (2,)),)}


def test_tiny_adam_preconditioned_sharpness_plateaus_at_38(tiny):
    s = ae.summary(tiny)
    assert ae.threshold(0.9) == pytest.approx(38.0)
    assert not s["adam_diverged_lr0"]
    assert 32.3 <= s["adam_late_median_lr0"] <= 43.7
    # the raw sharpness is nowhere near its own GD threshold 2/eta: nothing pins it
    assert s["adam_late_sharpness_lr0"] * ae.TINY.adam_lrs[0] < 1.0


@pytest.mark.parametrize("eps", [1e-8, 0.3])
def test_rmsprop_preconditioner_is_what_optax_applies(getkey, eps):
    lr, decay = 0.07, 0.8
    opt = make_optimizer("rmsprop", learning_rate=lr, decay=decay, eps=eps)
    params = _tree(getkey())
    state = opt.init(params)
    for _ in range(3):  # a non-trivial nu
        _, state = opt.update(_tree(getkey()), state, params)
    g = _tree(getkey())
    p = ae.rmsprop_preconditioner(state, g, decay=decay, eps=eps)
    upd, _ = opt.update(g, state, params)
    want = jax.tree.map(lambda gi, pi: -lr * gi / pi, g, p)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_frozen_momentum_continues_adam_exactly(getkey):
    b1, b2, eps, lr = 0.9, 0.99, 1e-3, 0.05
    adam = make_optimizer("adam", learning_rate=lr, b1=b1, b2=b2, eps=eps)
    params = _tree(getkey())
    state = adam.init(params)
    for _ in range(4):
        _, state = adam.update(_tree(getkey()), state, params)
    g = _tree(getkey())
    p = hl.adam_preconditioner(state, g, b1=b1, b2=b2, eps=eps)
    (adam_state,) = ae._find(state, optax.ScaleByAdamState)
    mu = adam_state.mu
    frozen = optax.inject_hyperparams(ae.frozen_momentum)(learning_rate=lr, b1=b1)
    fstate = frozen.init(params)._replace(inner_state=ae.FrozenState(mu, p))
    want, _ = adam.update(g, state, params)
    got, _ = frozen.update(g, fstate, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize(("ratio", "stable"), [(0.95, True), (1.05, False)])
def test_frozen_momentum_threshold_on_a_quadratic(ratio, stable):
    h = jnp.array([4.0, 1.0, 0.25])
    p = jnp.array([2.0, 0.5, 1.0])  # P^-1 H = diag(2, 2, 0.25)
    lr = ratio * ae.threshold(0.9) / 2.0
    opt = ae.frozen_momentum(lr, 0.9)
    state = ae.FrozenState(jnp.zeros(3), p)

    def step(carry, _):
        x, s = carry
        u, s = opt.update(h * x, s)
        return (x + u, s), None

    (x, _), _ = jax.lax.scan(step, (jnp.ones(3), state), None, length=3000)
    assert bool(jnp.linalg.norm(x) < 1.0) == stable


def test_save_load_round_trip(tiny, tmp_path):
    ae.save(tiny, tmp_path / "run")
    back = ae.load(tmp_path / "run")
    assert back.config == tiny.config
    for f in dataclasses.fields(ae.Results):
        if f.name != "config":
            np.testing.assert_array_equal(getattr(back, f.name), getattr(tiny, f.name))


def test_figures_and_summary(tiny):
    figs = ae.figures(tiny)
    assert set(figs) == {"preconditioned", "raw"}
    assert all(isinstance(f, Figure) for f in figs.values())
    assert ae.summary(tiny)["adam_threshold"] == pytest.approx(38.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [("b1", 1.0), ("freeze_step", 15), ("adam_lrs", ()), ("normalization", "sum"), ("n", 0),
     ("late_fraction", 0.0), ("rmsprop_lrs", (-1.0,))],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ae.Config(**{field: value})
