"""The adaptive-EoS study: RMSProp / frozen preconditioners against optax, the TINY run, I/O."""

import dataclasses
import functools

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


def _trees(seed, count):
    """``count`` small pytrees of float64 arrays (numpy draws: no compiles)."""
    rng = np.random.default_rng(seed)
    return [
        {"w": rng.standard_normal((3, 2)), "b": (rng.standard_normal(2),)} for _ in range(count)
    ]


def _assert_trees_close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_tiny_adam_preconditioned_sharpness_plateaus_at_38(tiny):
    s = ae.summary(tiny)
    assert ae.threshold(0.9) == pytest.approx(38.0)
    assert not s["adam_diverged_lr0"]
    assert 32.3 <= s["adam_late_median_lr0"] <= 43.7
    assert 0 < s["adam_plateau_step_lr0"] < 0.7 * ae.TINY.num_steps
    # the raw sharpness is nowhere near its own GD threshold 2/eta: nothing pins it
    assert s["adam_late_sharpness_lr0"] * ae.TINY.adam_lrs[0] < 1.0


# One jitted program per test case instead of dozens of eagerly compiled optax ops.
@functools.partial(jax.jit, static_argnums=0)
def _after_updates(opt, params, grads):
    """Feed ``grads[:-1]`` to ``opt``; return the state and the update for ``grads[-1]``."""
    state = opt.init(params)
    for g in grads[:-1]:
        _, state = opt.update(g, state, params)
    return state, opt.update(grads[-1], state, params)[0]


@pytest.mark.parametrize("eps", [1e-8, 0.3])
def test_rmsprop_preconditioner_is_what_optax_applies(eps):
    lr, decay = 0.07, 0.8
    opt = make_optimizer("rmsprop", learning_rate=lr, decay=decay, eps=eps)
    params, *grads = _trees(0, 5)  # three gradients for a non-trivial nu, then g
    state, upd = _after_updates(opt, params, grads)
    g = grads[-1]
    p = jax.jit(functools.partial(hl.rmsprop_preconditioner, decay=decay, eps=eps))(state, g)
    _assert_trees_close(upd, jax.tree.map(lambda gi, pi: -lr * gi / np.asarray(pi), g, p))
    # the hyperparameters are read from make_optimizer's injected state when not given
    _assert_trees_close(p, hl.rmsprop_preconditioner(state, g))
    with pytest.raises(ValueError, match="ScaleByRmsState"):
        hl.rmsprop_preconditioner(optax.sgd(0.1).init(params), g)


def test_frozen_momentum_continues_adam_exactly():
    b1, b2, eps, lr = 0.9, 0.99, 1e-3, 0.05
    adam = make_optimizer("adam", learning_rate=lr, b1=b1, b2=b2, eps=eps)
    params, *grads = _trees(1, 6)
    state, want = _after_updates(adam, params, grads)
    frozen = optax.inject_hyperparams(ae.frozen_momentum)(learning_rate=lr, b1=b1)

    @jax.jit
    def frozen_update(state, g):
        p = hl.adam_preconditioner(state, g, b1=b1, b2=b2, eps=eps)
        (adam_state,) = ae._find(state, optax.ScaleByAdamState)
        fstate = frozen.init(params)._replace(inner_state=ae.FrozenState(adam_state.mu, p))
        return frozen.update(g, fstate, params)[0]

    _assert_trees_close(frozen_update(state, grads[-1]), want)


@jax.jit
def _frozen_quadratic(lr):
    h = jnp.array([4.0, 1.0, 0.25])
    p = jnp.array([2.0, 0.5, 1.0])  # P^-1 H = diag(2, 2, 0.25)
    opt = ae.frozen_momentum(lr, 0.9)

    def step(carry, _):
        x, s = carry
        u, s = opt.update(h * x, s)
        return (x + u, s), None

    (x, _), _ = jax.lax.scan(step, (jnp.ones(3), ae.FrozenState(jnp.zeros(3), p)), length=3000)
    return jnp.linalg.norm(x)


@pytest.mark.parametrize(("ratio", "stable"), [(0.95, True), (1.05, False)])
def test_frozen_momentum_threshold_on_a_quadratic(ratio, stable):
    lr = ratio * ae.threshold(0.9) / 2.0  # the top eigenvalue of P^-1 H is 2
    assert bool(_frozen_quadratic(jnp.asarray(lr)) < 1.0) == stable


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
     ("late_fraction", 0.0), ("rmsprop_lrs", (-1.0,)), ("plateau_fraction", 1.5)],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ae.Config(**{field: value})
