"""Critical sharpness equals its closed forms on quadratics; batch sharpness equals dense Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessian_lab import losses, models, optim, testing, trainer
from hessian_lab import tree as tu
from hessian_lab._batch_sharpness import batch_sharpness
from hessian_lab._critical import (
    STATUS,
    critical_sharpness,
    critical_sharpness_callback,
    update_direction,
)
from hessian_lab.callbacks import StepInfo, run_callbacks

X = jax.random.normal(jax.random.key(1), (12, 3))
DATA = (X, jax.random.normal(jax.random.key(2), (12, 2)))
NET = models.mlp(3, 2, depth=1, width=5, activation="tanh")
MLP_LOSS = losses.make_loss_fn(NET.apply, "mse")
MLP_PARAMS = NET.init(jax.random.key(0))


def linear_loss(p, batch):
    """A quadratic on a non-trivial pytree: least squares of x w + b."""
    x, y = batch
    return 0.5 * jnp.mean((x @ p["w"] + p["b"][0] - y[:, 0]) ** 2)


LIN_PARAMS = {"w": jnp.array([0.3, -1.0, 2.0]), "b": (jnp.array(0.5),)}


def _flat(tree):
    return np.asarray(tu.to_flat(tree))


def _gd_closed_form(loss, params, data):
    H = np.asarray(testing.dense_hessian(loss, params, data))
    g = _flat(jax.grad(loss)(params, data))
    return g @ H @ g / (g @ g), H, g


def test_on_a_quadratic_gd_and_a_given_direction_are_exact_jitted_and_eager():
    want_gd, H, g = _gd_closed_form(linear_loss, LIN_PARAMS, DATA)
    flat_d = -g + 0.3 * np.asarray(jax.random.normal(jax.random.key(3), g.shape))
    assert g @ flat_d < 0
    want_d = flat_d @ H @ flat_d / abs(g @ flat_d)  # 2 / eta_c, eta_c = 2 |g^T d| / d^T H d
    _, unravel = tu.ravel(LIN_PARAMS)
    run = jax.jit(lambda d, e: critical_sharpness(linear_loss, LIN_PARAMS, d, DATA, eta_init=e))
    for flat, want in ((-g, want_gd), (flat_d, want_d)):
        d = unravel(jnp.asarray(flat))
        for eta_init in (1e-3, 2 / want, 30.0):
            res = run(d, eta_init)
            np.testing.assert_allclose(res.value, want, rtol=1e-6)
            np.testing.assert_allclose(res.eta_c, 2 / want, rtol=1e-6)
            assert res.bracket[0] <= res.eta_c <= res.bracket[1]
            assert bool(res.converged) and int(res.status) == 0 and int(res.num_evals) <= 3
    eager = critical_sharpness(linear_loss, LIN_PARAMS, d, DATA)  # eta_init = 1 / |d|
    np.testing.assert_allclose(eager.value, want_d, rtol=1e-6)
    assert int(eager.num_evals) == 2  # exact after two passes: the model's root, confirmed


def test_mlp_line_search_meets_the_definition_within_budget():
    lam_max = np.linalg.eigvalsh(np.asarray(testing.dense_hessian(MLP_LOSS, MLP_PARAMS, DATA)))[-1]

    @jax.jit
    def probe(params):
        l0, g = jax.value_and_grad(MLP_LOSS)(params, DATA)
        d = jax.tree.map(jnp.negative, g)
        res = critical_sharpness(MLP_LOSS, params, d, DATA, loss0=l0, slope=tu.vdot(g, d))
        starved = critical_sharpness(MLP_LOSS, params, d, DATA, max_evals=2, eta_init=10.0)
        line = jax.vmap(lambda e: MLP_LOSS(tu.axpy(e, d, params), DATA) - l0)
        below = line(jnp.linspace(0.01, 0.99, 50) * res.eta_c)
        return res, starved, below, line(res.eta_c[None])[0], tu.vdot(g, d)

    res, starved, below, at_root, slope = probe(MLP_PARAMS)
    assert bool(res.converged) and 1 <= int(res.num_evals) <= 8
    assert 0 < float(res.value) <= lam_max
    # independent check of the definition: the loss is below L0 on (0, eta_c), back at eta_c
    assert np.all(below < 0) and abs(float(at_root)) <= 1e-3 * abs(float(slope)) * res.eta_c
    # a budget of 2 stops early, flagged, with a bracket around the root
    assert int(starved.num_evals) == 2 and not bool(starved.converged)
    assert STATUS[int(starved.status)] == "budget" and np.isfinite(starved.value)
    assert float(starved.bracket[0]) < float(res.eta_c) < float(starved.bracket[1])


def _nan_beyond(p, batch):
    return jnp.where(jnp.max(jnp.abs(p["w"])) > 10.0, jnp.nan, linear_loss(p, batch))


def test_bad_input_is_flagged_never_a_silent_number():
    @jax.jit
    def flagged(p):
        g = jax.grad(linear_loss)(p, DATA)
        run = lambda loss, d, e=None: critical_sharpness(loss, p, d, DATA, eta_init=e)  # noqa: E731
        return (
            run(linear_loss, jax.tree.map(jnp.zeros_like, g)),  # a zero update
            run(linear_loss, g),  # ascent
            run(_nan_beyond, jax.tree.map(jnp.negative, g), 1e3),  # leaves the finite region
            run(lambda p, b: -jnp.sum(p["w"]), jax.tree.map(jnp.ones_like, g)),  # never rises
        )

    statuses = [("not_descent", 0), ("not_descent", 0), ("nonfinite", 1), ("no_rise", 8)]
    for res, (status, evals) in zip(flagged(LIN_PARAMS), statuses, strict=True):
        assert STATUS[int(res.status)] == status and not bool(res.converged)
        assert np.isnan(res.value) and np.isnan(res.eta_c) and int(res.num_evals) == evals


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"max_evals": 1}, "max_evals"),
        ({"max_evals": 4.0}, "max_evals"),
        ({"rtol": 0.0}, "rtol"),
        ({"eta_init": -1.0}, "eta_init"),
    ],
)
def test_bad_options_raise(kw, match):
    d = jax.grad(linear_loss)(LIN_PARAMS, DATA)
    with pytest.raises(ValueError, match=match):
        critical_sharpness(linear_loss, LIN_PARAMS, d, DATA, **kw)
    with pytest.raises(ValueError, match="direction"):
        critical_sharpness(linear_loss, LIN_PARAMS, {"w": d["w"]}, DATA)


def test_update_direction_is_the_next_update_at_unit_rate():
    p = LIN_PARAMS
    g0 = jax.grad(linear_loss)(p, DATA)
    g1 = jax.tree.map(lambda x: 0.5 * x + 0.1, g0)
    f0, f1 = _flat(g0), _flat(g1)
    b1, b2, eps = 0.9, 0.999, 1e-8
    m, v = (1 - b1) * f0, (1 - b2) * f0**2
    m, v = b1 * m + (1 - b1) * f1, b2 * v + (1 - b2) * f1**2  # the current gradient folded in
    adam = -(m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
    cases = [
        (optax.sgd(0.1), 0.1, -f1),
        (optax.sgd(0.1, momentum=0.9), 0.1, -(f1 + 0.9 * f0)),
        (optax.adam(0.01, b1, b2, eps), 0.01, adam),
        (optim.make_optimizer("adam", learning_rate=0.01), None, adam),  # rate from the state
    ]
    for opt, lr, want in cases:
        state = opt.update(g0, opt.init(p), p)[1]  # one update taken: non-trivial moments
        d = update_direction(opt, g1, state, p, lr)
        np.testing.assert_allclose(_flat(d), want, rtol=1e-8)
    with pytest.raises(ValueError, match="learning_rate"):
        update_direction(optax.sgd(0.1), g1, optax.sgd(0.1).init(p), p)


def test_callback_in_the_trainer_matches_closed_forms_along_the_gd_path():
    lr, steps = 0.3, 4
    shifted = (DATA[0], DATA[1] + 0.1)
    opt = optim.make_optimizer("gd", learning_rate=lr)
    cbs = [
        critical_sharpness_callback(linear_loss, optimizer=opt, relative_data=shifted),
        critical_sharpness_callback(linear_loss, "batch", optimizer=opt, every=2, name="cs_b"),
    ]
    step = trainer.make_step(linear_loss, opt, callbacks=cbs, chunk_size=steps)
    h = trainer.train(step, LIN_PARAMS, DATA, num_steps=steps).history
    H = np.asarray(testing.dense_hessian(linear_loss, LIN_PARAMS, DATA))  # constant: a quadratic
    p, want, rel = LIN_PARAMS, [], []
    for _ in range(steps):
        g, g2 = (_flat(jax.grad(linear_loss)(p, b)) for b in (DATA, shifted))
        want.append(g @ H @ g / (g @ g))
        rel.append(g @ H @ g / abs(g2 @ g) if g2 @ g > 0 else np.nan)  # d = -g
        p = jax.tree.map(lambda x, gx: x - lr * gx, p, jax.grad(linear_loss)(p, DATA))
    np.testing.assert_allclose(h["critical_sharpness"], want, rtol=1e-6)
    np.testing.assert_allclose(h["critical_sharpness_x_lr"], lr * np.array(want), rtol=1e-6)
    np.testing.assert_allclose(h["critical_sharpness_relative"], rel, rtol=1e-6)
    np.testing.assert_allclose(h["cs_b"][::2], want[::2], rtol=1e-6)
    assert np.isnan(h["cs_b"][1::2]).all()
    assert np.all(h["critical_sharpness_num_evals"] <= 8)
    assert np.all(h["critical_sharpness_status"] == 0)


def test_callback_in_a_users_jitted_loop_with_adam_matches_the_closed_form():
    opt, lr = optax.adam(0.05), 0.05
    c = critical_sharpness_callback(linear_loss, DATA, optimizer=opt, max_evals=6)

    @jax.jit
    def loop(params):
        def body(carry, t):
            params, opt_state, cb_state = carry
            loss, g = jax.value_and_grad(linear_loss)(params, DATA)
            info = StepInfo(t, params, opt_state, g, loss, learning_rate=jnp.asarray(lr))
            (cb_state,), m = run_callbacks((c,), (cb_state,), info)
            u, new_state = opt.update(g, opt_state, params)
            return (optax.apply_updates(params, u), new_state, cb_state), (m, params, opt_state)

        carry = (params, opt.init(params), c.init(params))
        return jax.lax.scan(body, carry, jnp.arange(3))[1]

    metrics, params, states = loop(LIN_PARAMS)
    H = np.asarray(testing.dense_hessian(linear_loss, LIN_PARAMS, DATA))
    for t in range(3):
        p, s = jax.tree.map(lambda x, t=t: x[t], (params, states))
        g = jax.grad(linear_loss)(p, DATA)
        d = _flat(update_direction(opt, g, s, p, lr))
        want = d @ H @ d / abs(_flat(g) @ d)
        np.testing.assert_allclose(metrics["critical_sharpness"][t], want, rtol=1e-6)
        np.testing.assert_allclose(metrics["critical_sharpness_x_lr"][t], lr * want, rtol=1e-6)
    assert np.all(metrics["critical_sharpness_num_evals"] <= 3)
    assert np.all(metrics["critical_sharpness_status"] == 0)


def test_callback_options_and_step_info_checks():
    with pytest.raises(ValueError, match="max_evals"):
        critical_sharpness_callback(linear_loss, optimizer=optax.sgd(0.1), max_evals=1)
    with pytest.raises(ValueError, match="data"):
        critical_sharpness_callback(linear_loss, "train", optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="optimizer"):
        critical_sharpness_callback(linear_loss, optimizer=None)
    c = critical_sharpness_callback(linear_loss, optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="grads"):
        c.update(c.init(LIN_PARAMS), StepInfo(0, LIN_PARAMS))


def test_batch_sharpness_equals_dense_hessians_per_batch():
    batches = jax.tree.map(lambda a: a.reshape(3, 4, *a.shape[1:]), DATA)
    flat, unravel = tu.ravel(MLP_PARAMS)

    @jax.jit
    @jax.vmap
    def dense(b):  # the reference: g^T H g / g^T g with H from jax.hessian
        f = lambda w: MLP_LOSS(unravel(w), b)  # noqa: E731
        g, H = jax.grad(f)(flat), jax.hessian(f)(flat)
        return g @ H @ g / (g @ g)

    per = np.asarray(dense(batches))
    res = batch_sharpness(MLP_LOSS, MLP_PARAMS, batches)
    jitted = jax.jit(lambda p, b: batch_sharpness(MLP_LOSS, p, b))(MLP_PARAMS, batches)
    for r in (res, jitted):
        np.testing.assert_allclose(r.per_batch, per, rtol=1e-10)
        np.testing.assert_allclose(r.value, np.mean(per), rtol=1e-10)
        np.testing.assert_allclose(r.stderr, np.std(per, ddof=1) / np.sqrt(3), rtol=1e-10)
    with pytest.raises(ValueError, match="batches"):
        batch_sharpness(MLP_LOSS, MLP_PARAMS, (DATA[0][:3], DATA[1][:4]))
