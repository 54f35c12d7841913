"""hl.subsample_start: the top Hessian eigenvector of a random subset, as a Lanczos start.

References: the dense Hessian (``jax.hessian`` + ``eigh``) of the mean loss over exactly the
examples it reports using, and of the whole dataset for the warm-started full-data Lanczos."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_lab as hl


def _problem(n=400):
    """An MLP on inputs near a 2-D subspace (real data's low-dimensional structure in little)."""
    k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(0), 5)
    z = jax.random.normal(k1, (n, 2), jnp.float64)
    x = z @ jax.random.normal(k2, (2, 10), jnp.float64)
    x = x + 0.05 * jax.random.normal(k3, (n, 10), jnp.float64)
    y = jnp.tanh(z[:, 0] - 0.5 * z[:, 1])
    params = {
        "w1": jax.random.normal(k4, (10, 8), jnp.float64) / jnp.sqrt(10.0),
        "w2": jax.random.normal(k5, (8,), jnp.float64) / jnp.sqrt(8.0),
    }

    def loss(p, batch):
        return 0.5 * jnp.mean((jnp.tanh(batch[0] @ p["w1"]) @ p["w2"] - batch[1]) ** 2)

    return loss, params, (x, y)


def _dense_eigh(loss, params, data):
    flat, unravel = hl.tree.ravel(params)
    H = jax.jit(jax.hessian(lambda f: loss(unravel(f), data)))(flat)
    vals, vecs = np.linalg.eigh(np.asarray(H))
    return vals, vecs, unravel


def test_vector_and_value_are_the_top_eigenpair_of_the_reported_subsets_dense_hessian():
    loss, params, data = _problem()
    res = hl.subsample_start(loss, params, data, jax.random.key(1), size=40, num_iters=30)
    idx = np.asarray(res.indices)
    assert idx.shape == (40,) and len(set(idx.tolist())) == 40 and np.all(np.diff(idx) > 0)
    vals, vecs, _ = _dense_eigh(loss, params, jax.tree.map(lambda a: a[idx], data))
    np.testing.assert_allclose(float(res.value), vals[-1], rtol=1e-9)
    v = np.asarray(hl.tree.ravel(res.vector)[0])
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, rtol=1e-9)
    assert abs(v @ vecs[:, -1]) > 1 - 1e-9
    assert int(res.num_matvecs) == 30 and bool(res.finite)  # no residual product


def test_full_data_lanczos_from_it_converges_in_far_fewer_steps_than_from_a_random_start():
    loss, params, data = _problem()
    lam = _dense_eigh(loss, params, data)[0][-1]
    op = hl.full_data_hvp(loss, params, data, chunk_size=400)
    start = hl.subsample_start(loss, params, data, jax.random.key(1), size=40).vector
    cold = hl.tree.random_like(jax.random.key(2), params)

    @jax.jit
    def errors(v0):  # relative errors of lambda_max after 4 and 12 steps from v0
        tops = [hl.top_eigs(op, v0, num_iters=s).values[0] for s in (4, 12)]
        return jnp.abs(jnp.stack(tops) - lam) / lam

    warm, cold = np.asarray(errors(start)), np.asarray(errors(cold))
    # from a random start 4 steps leave ~1e-3; from the subset's vector (40 of 400 examples,
    # 15 subset products ~ 1.5 full ones) ~1e-5, and Lanczos still converges to lambda_max
    assert warm[0] < 1e-4
    assert warm[0] < cold[0] / 50
    assert warm[1] < 1e-9


def test_same_key_same_numbers_under_jit_and_a_different_key_another_subset():
    loss, params, data = _problem()
    eager = hl.subsample_start(loss, params, data, jax.random.key(3), size=50, num_iters=10)
    jitted = jax.jit(lambda p, d, k: hl.subsample_start(loss, p, d, k, size=50, num_iters=10))(
        params, data, jax.random.key(3)
    )
    np.testing.assert_array_equal(eager.indices, jitted.indices)
    np.testing.assert_allclose(float(eager.value), float(jitted.value), rtol=1e-12)
    other = hl.subsample_start(loss, params, data, jax.random.key(4), size=50, num_iters=10)
    assert not np.array_equal(eager.indices, other.indices)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, r"size: must be in \[1, 400\], got 0"),
        ({"size": 401}, r"size: must be in \[1, 400\], got 401"),
        ({"size": 2.5}, r"size: must be an int"),
        ({"size": 40, "num_iters": 0}, r"num_iters"),
    ],
)
def test_bad_input_is_refused_naming_the_option(kwargs, match):
    loss, params, data = _problem()
    with pytest.raises(ValueError, match=match):
        hl.subsample_start(loss, params, data, jax.random.key(0), **kwargs)


def test_a_non_key_is_refused():
    loss, params, data = _problem()
    with pytest.raises(ValueError, match="key: must be a PRNG key"):
        hl.subsample_start(loss, params, data, 0, size=10)


def test_a_train_mode_batchnorm_loss_uses_the_subsets_statistics_and_still_warm_starts():
    """A train-mode BatchNorm curvature loss normalises with the batch's statistics: the start
    is the top eigenvector of the Hessian with the *subset's* statistics (a different matrix),
    and full-data Lanczos from it, with the full data's statistics, still reaches lambda_max."""
    _, params, (x, y) = _problem()
    params, y = {**params, "gain": jnp.ones(8, jnp.float64)}, y[:, None]

    def apply(p, s, inputs, *, train, key):
        h = inputs @ p["w1"]
        mean, var = (h.mean(0, keepdims=True), h.var(0, keepdims=True)) if train else s
        out = jnp.tanh(p["gain"][None] * (h - mean) / jnp.sqrt(var + 1e-5)) @ p["w2"]
        return out[:, None], s  # (n, 1) outputs: MSE averages over examples

    state = (jnp.zeros((1, 8)), jnp.ones((1, 8)))  # running statistics: unused in train mode
    loss = hl.curvature_loss(hl.stateful_loss(apply, "mse"), state)

    def plain(p, batch):  # the same train-mode loss written out, for the dense reference
        h = batch[0] @ p["w1"]
        z = (h - h.mean(0, keepdims=True)) / jnp.sqrt(h.var(0, keepdims=True) + 1e-5)
        out = jnp.tanh(p["gain"][None] * z) @ p["w2"]
        return 0.5 * jnp.mean((out - batch[1][:, 0]) ** 2)

    np.testing.assert_allclose(float(loss(params, (x, y))), float(plain(params, (x, y))))

    res = hl.subsample_start(loss, params, (x, y), jax.random.key(1), size=40, num_iters=40)
    idx = np.asarray(res.indices)
    sub_vals, sub_vecs, _ = _dense_eigh(plain, params, (x[idx], y[idx]))
    np.testing.assert_allclose(float(res.value), sub_vals[-1], rtol=1e-8)
    assert abs(np.asarray(hl.tree.ravel(res.vector)[0]) @ sub_vecs[:, -1]) > 1 - 1e-8
    full_vals = _dense_eigh(plain, params, (x, y))[0]
    assert abs(sub_vals[-1] - full_vals[-1]) > 1e-3 * full_vals[-1]  # the subset's own matrix
    op = hl.full_data_hvp(loss, params, (x, y), chunk_size=400)
    top = hl.top_eigs(op, res.vector, num_iters=12).values[0]
    np.testing.assert_allclose(float(top), full_vals[-1], rtol=1e-9)
