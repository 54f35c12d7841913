"""Callbacks equal direct estimator calls, run at their cadence inside the jitted step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_lab as hl
from hessian_lab import callbacks as cb
from hessian_lab import losses, models, optim, testing, trainer

NET = models.mlp(3, 2, depth=1, width=5, activation="tanh")
LOSS = losses.make_loss_fn(NET.apply, "mse")
X = jax.random.normal(jax.random.key(1), (12, 3))
DATA = (X, jax.random.normal(jax.random.key(2), (12, 2)))
PARAMS = NET.init(jax.random.key(0))


def _info(params=PARAMS, step=0, **kw):
    g = jax.grad(LOSS)(params, DATA)
    return cb.StepInfo(
        jnp.asarray(step),
        params,
        grads=g,
        loss=LOSS(params, DATA),
        batch=DATA,
        data=DATA,
        learning_rate=jnp.asarray(0.5),
        **kw,
    )


def _run(c, info, state=None):
    state = c.init(info.params) if state is None else state
    states, metrics = jax.jit(cb.run_callbacks, static_argnums=0)((c,), (state,), info)
    return state, states[0], metrics


def test_sharpness_equals_direct_call_and_dense_hessian():
    # 24 Lanczos steps on a 32-dimensional problem: converged, whatever the start vector
    c = cb.sharpness(LOSS, every=3, k=2, num_iters=24, chunk_size=5)
    v0, v1, m = _run(c, _info())
    res = jax.jit(
        lambda v: hl.top_eigs(
            hl.full_data_hvp(LOSS, PARAMS, DATA, chunk_size=5), v, k=2, num_iters=24
        )
    )(v0)
    np.testing.assert_allclose(m["sharpness"], res.values[0], rtol=1e-10)
    np.testing.assert_allclose(m["sharpness_1"], res.values[1], rtol=1e-10)
    lam = np.linalg.eigvalsh(jax.jit(lambda: testing.dense_hessian(LOSS, PARAMS, DATA))())
    np.testing.assert_allclose(m["sharpness"], lam[-1], rtol=1e-6)
    np.testing.assert_allclose(m["sharpness_x_lr"], 0.5 * lam[-1], rtol=1e-6)
    assert float(m["sharpness_above_2_over_lr"]) == float(0.5 * lam[-1] > 2)
    # warm start: the state is now the top eigenvector
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b[0]), v1, res.vectors)
    # off-cadence: NaN metrics, state unchanged
    _, v2, m2 = _run(c, _info(step=4), state=v1)
    assert all(np.isnan(v) for v in m2.values())
    jax.tree.map(np.testing.assert_array_equal, v2, v1)


def test_sharpness_residual_is_the_dense_one_at_num_iters_products():
    """Four steps (not converged): the residual taken from the run's products is the dense
    Hessian's ``||H y - lambda y||``, and the measurement is ``top_eigs`` at 4 products."""
    c = cb.sharpness(LOSS, every=1, num_iters=4)
    v0, v1, m = _run(c, _info())
    H = np.asarray(jax.jit(lambda: testing.dense_hessian(LOSS, PARAMS, DATA))())
    y = np.asarray(hl.tree.ravel(v1)[0])
    true = np.linalg.norm(H @ y - float(m["sharpness"]) * y)
    assert true > 1e-3  # far above rounding: the test can tell the two apart
    np.testing.assert_allclose(m["sharpness_residual"], true, rtol=1e-9)
    op = hl.full_data_hvp(LOSS, PARAMS, DATA, chunk_size=5)
    direct = jax.jit(lambda v: hl.top_eigs(op, v, num_iters=4, exact_residuals=False))(v0)
    assert int(direct.num_matvecs) == 4
    np.testing.assert_allclose(m["sharpness"], direct.values[0], rtol=1e-10)


def test_linearized_sharpness_equals_the_recomputing_one():
    # linearize=True changes how the products are paid for, not the operator
    plain = cb.sharpness(LOSS, k=2, num_iters=24, chunk_size=5)
    lin = cb.sharpness(LOSS, k=2, num_iters=24, chunk_size=5, linearize=True)
    _, _, m_plain = _run(plain, _info())
    _, _, m_lin = _run(lin, _info())
    for name in ("sharpness", "sharpness_1"):
        np.testing.assert_allclose(m_lin[name], m_plain[name], rtol=1e-9)
    with pytest.raises(ValueError, match="linearize"):
        cb.sharpness(LOSS, linearize=1)


def test_subset_sharpness_measures_a_fixed_random_subset():
    # the callback's subset= is data.random_subset(train, m, seed=0), at every measurement
    from hessian_lab import data

    sub = data.random_subset(data.Dataset(*map(np.asarray, DATA)), 7, seed=0)
    c = cb.sharpness(LOSS, k=2, num_iters=24, subset=7)
    _, _, m = _run(c, _info())
    lam = np.linalg.eigvalsh(testing.dense_hessian(LOSS, PARAMS, (sub.x, sub.y)))
    np.testing.assert_allclose([m["sharpness"], m["sharpness_1"]], lam[::-1][:2], rtol=1e-8)
    full = np.linalg.eigvalsh(testing.dense_hessian(LOSS, PARAMS, DATA))
    assert abs(float(m["sharpness"]) - full[-1]) > 1e-6  # a different quantity on 7 of 12
    # on given data too, and for the preconditioned and SLQ callbacks
    given = cb.sharpness(LOSS, DATA, k=2, num_iters=24, subset=7)
    np.testing.assert_allclose(_run(given, _info())[2]["sharpness"], m["sharpness"], rtol=1e-10)
    grid = jnp.linspace(-1.0, 3.0, 9)
    dens = [
        _run(cb.spectral_density(LOSS, d, grid=grid, num_iters=8, subset=s), _info())[2]
        for d, s in ((DATA, 7), ((jnp.asarray(sub.x), jnp.asarray(sub.y)), None))
    ]
    np.testing.assert_allclose(dens[0]["spectral_density"], dens[1]["spectral_density"])
    for bad in (0, 13, 2.5):
        with pytest.raises(ValueError, match=r"^subset: must be an integer in \[1, 12\]"):
            cb.sharpness(LOSS, DATA, subset=bad)
    with pytest.raises(ValueError, match=r"^subset: must be an integer in \[1, 12\]"):
        _run(cb.sharpness(LOSS, subset=13), _info())  # training set: checked when traced


def test_minibatch_sharpness_uses_the_batch():
    batch = (X[:4], DATA[1][:4])
    c = cb.minibatch_sharpness(LOSS, num_iters=10)
    info = _info()._replace(batch=batch)
    v0, _, m = _run(c, info)
    res = jax.jit(lambda v: hl.top_eigs(hl.hvp(LOSS, PARAMS, batch), v, k=1, num_iters=10))(v0)
    np.testing.assert_allclose(m["minibatch_sharpness"], res.values[0], rtol=1e-10)


def test_batch_sharpness_is_the_curvature_along_the_batch_gradient():
    # Andreyev & Beneventano: g_B^T H_B g_B / |g_B|^2, against the dense minibatch Hessian.
    batch = (X[:5], DATA[1][:5])
    g = jax.grad(LOSS)(PARAMS, batch)
    _, _, m = _run(cb.batch_sharpness(LOSS), _info()._replace(batch=batch, grads=g))
    flat = hl.tree.ravel(g)[0]
    H = testing.dense_hessian(LOSS, PARAMS, batch)
    want = flat @ H @ flat / (flat @ flat)
    np.testing.assert_allclose(m["batch_sharpness"], want, rtol=1e-10)
    assert m["batch_sharpness"] <= np.linalg.eigvalsh(H)[-1] + 1e-12  # a Rayleigh quotient
    zero = jax.tree.map(jnp.zeros_like, g)
    _, _, m0 = _run(cb.batch_sharpness(LOSS), _info()._replace(batch=batch, grads=zero))
    assert np.isnan(m0["batch_sharpness"])  # no direction: flagged, not a number


def test_preconditioned_sharpness_equals_direct_call():
    opt = optim.make_optimizer("adam", learning_rate=0.01, b1=0.9, b2=0.99)
    s = opt.init(PARAMS)
    g = jax.grad(LOSS)(PARAMS, DATA)
    _, s = opt.update(g, s, PARAMS)
    c = cb.preconditioned_sharpness(LOSS, every=1, num_iters=10)
    info = _info(opt_state=s)
    v0, _, m = _run(c, info)
    P = hl.adam_preconditioner(s, info.grads, b1=0.9, b2=0.99, eps=1e-8)
    H = hl.full_data_hvp(LOSS, PARAMS, DATA, chunk_size=12)
    # P enters as an argument (a closed-over concrete P trips a check in _precond under jit).
    res = jax.jit(lambda v, P: hl.preconditioned_sharpness(H, P, v, k=1, num_iters=10))(v0, P)
    np.testing.assert_allclose(m["preconditioned_sharpness"], res.values[0], rtol=1e-10)


def test_hessian_trace_equals_direct_call():
    key = jax.random.key(5)
    c = cb.traces(LOSS, data=DATA, every=1, num_matvecs=8, key=key)
    _, k1, m = _run(c, _info()._replace(data=None))
    _, sub = jax.random.split(key)
    mv = hl.full_data_hvp(LOSS, PARAMS, DATA, chunk_size=12)
    tr = jax.jit(lambda k: hl.trace(mv, k, PARAMS, num_matvecs=8))(sub)
    np.testing.assert_allclose(m["hessian_trace"], tr.value, rtol=1e-10)
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(key))


def test_linearized_trace_and_density_equal_the_recomputing_ones():
    grid = jnp.linspace(-1.0, 3.0, 7)
    for make in (
        lambda lin: cb.traces(LOSS, data=DATA, num_matvecs=6, chunk_size=5, linearize=lin),
        lambda lin: cb.spectral_density(
            LOSS, num_iters=6, num_probes=2, grid=grid, chunk_size=5, linearize=lin
        ),
    ):
        _, _, plain = _run(make(False), _info())
        _, _, lin = _run(make(True), _info())
        assert plain.keys() == lin.keys()
        for k in plain:
            np.testing.assert_allclose(lin[k], plain[k], rtol=1e-9, atol=1e-12, err_msg=k)


def test_ntk_traces_equal_direct_calls():
    c = cb.traces(LOSS, NET.apply, every=1, num_matvecs=4, ntk_iters=6)
    _, _, m = _run(c, _info())
    np.testing.assert_allclose(
        m["ntk_trace"], hl.ntk_trace(NET.apply, PARAMS, X, chunk_size=12), rtol=1e-10
    )
    top = jax.jit(lambda: hl.ntk_top_eig(NET.apply, PARAMS, X, num_iters=6))().values[0]
    np.testing.assert_allclose(m["ntk_top_eig"], top, rtol=1e-8)


def test_spectral_density_on_a_fixed_grid():
    grid = jnp.linspace(-1.0, 3.0, 7)
    c = cb.spectral_density(LOSS, every=5, num_iters=6, num_probes=2, grid=grid)
    _, _, m = _run(c, _info())
    assert m["spectral_density"].shape == (7,) and np.isfinite(m["spectral_density"]).all()


def test_grad_norm_and_catapult_marker_in_training():
    # Large rate: the loss rises above L_0 at step 1 (a catapult), and sharpness crosses 2/eta.
    opt = optim.make_optimizer("gd", learning_rate=0.1)
    cbs = [
        cb.grad_norm(every=2),
        cb.loss_catapult(),
        cb.sharpness(LOSS, every=3, num_iters=10),
        cb.full_loss(LOSS),
    ]
    r = trainer.train(
        trainer.make_step(LOSS, opt, callbacks=cbs, chunk_size=7), PARAMS, DATA, num_steps=7
    )
    h = r.history
    g0 = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(jax.grad(LOSS)(PARAMS, DATA))))
    np.testing.assert_allclose(h["grad_norm"][0], g0, rtol=1e-12)
    assert np.isnan(h["grad_norm"][1::2]).all() and np.isfinite(h["grad_norm"][::2]).all()
    np.testing.assert_allclose(h["loss_catapult"], (h["loss"] > h["loss"][0]).astype(float))
    np.testing.assert_allclose(h["full_loss"], h["loss"], rtol=1e-12)
    assert np.isfinite(h["sharpness"][::3]).all() and np.isnan(h["sharpness"][1::3]).all()
    v0 = cb.sharpness(LOSS, num_iters=10).init(PARAMS)
    want = jax.jit(
        lambda v: hl.top_eigs(hl.full_data_hvp(LOSS, PARAMS, DATA, chunk_size=12), v, num_iters=10)
    )(v0).values[0]
    np.testing.assert_allclose(h["sharpness"][0], want, rtol=1e-10)
    np.testing.assert_allclose(h["sharpness_x_lr"][0], 0.1 * want, rtol=1e-10)


def test_callbacks_run_inside_one_chunk_per_host_transfer():
    calls = []
    cbs = [cb.sharpness(LOSS, every=2, num_iters=4)]
    step = trainer.make_step(LOSS, optax.sgd(0.05), callbacks=cbs, chunk_size=3)
    real = step.run
    step = step._replace(run=lambda *a: calls.append(1) or real(*a))
    r = trainer.train(step, PARAMS, DATA, num_steps=6)
    assert len(calls) == 2 and r.history["sharpness"].shape == (6,)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: cb.sharpness(LOSS, every=0), "every"),
        (lambda: cb.grad_norm(every=1.5), "every"),
        (lambda: cb.sharpness(LOSS, k=3, num_iters=2), "num_iters"),
    ],
)
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_duplicate_metric_names_rejected():
    c = cb.grad_norm()
    with pytest.raises(ValueError, match="callbacks"):
        cb.run_callbacks((c, c), ((), ()), _info())


def test_traces_ntk_only_with_per_output_normalisation():
    c = cb.traces(LOSS, NET.apply, every=1, num_matvecs=0, ntk_iters=6, normalization="per_output")
    _, _, m = _run(c, _info())
    assert "hessian_trace" not in m
    direct = hl.ntk_trace(NET.apply, PARAMS, X, normalization="per_output")
    np.testing.assert_allclose(m["ntk_trace"], direct, rtol=1e-10)
    for bad, word in (({"num_matvecs": 1}, "num_matvecs"), ({"normalization": "x"}, "normaliz")):
        with pytest.raises(ValueError, match=word):
            cb.traces(LOSS, NET.apply, **bad)


def test_critical_sharpness_in_the_trainer_is_the_curvature_along_the_gradient():
    # GD on L = w^T A w / 2: lambda_c = g^T A g / g^T g exactly (a quadratic), at every step.
    A = jnp.diag(jnp.asarray([3.0, 1.0, 0.5]))
    loss = lambda w, b: 0.5 * w @ A @ w  # noqa: E731
    opt = optim.make_optimizer("gd", learning_rate=0.1)
    c = cb.critical_sharpness(loss, optimizer=opt, data="batch")
    step = trainer.make_step(loss, opt, callbacks=[c])
    w0 = jnp.asarray([1.0, -2.0, 0.5])
    hist = trainer.train(step, w0, (jnp.zeros((1, 1)),), num_steps=4).history
    w, want = np.asarray(w0), []
    for _ in range(4):
        g = np.asarray(A) @ w
        want.append(g @ np.asarray(A) @ g / (g @ g))
        w = w - 0.1 * g
    np.testing.assert_allclose(hist["critical_sharpness"], want, rtol=1e-6)
