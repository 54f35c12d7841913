"""Derivatives of ``cross_entropy`` (written-out JVP) against dense references; its GGN's memory.

The reference loss is the textbook ``-mean(sum(one_hot * log_softmax(z)))`` differentiated by
plain autodiff, independent of the library's custom JVP.
"""

import jax
import jax.numpy as jnp
import numpy as np

import hessian_lab as hl
from hessian_lab import losses, testing

K = 5


def _reference(logits, labels):
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def _logits_labels(key, lead):
    kz, ky = jax.random.split(key)
    logits = 2 * jax.random.normal(kz, (*lead, K))
    labels = jax.random.randint(ky, lead, 0, K).ravel()
    labels = labels.at[0].set(0).at[-1].set(K - 1).reshape(lead)  # the edge classes
    return logits, labels


def _derivatives_of(loss, z, y, u, w):
    """Value, gradient, Hessian (reverse over reverse), HVP and a third derivative of ``loss``."""
    grad = jax.grad(loss)
    hvp = lambda o, u: jax.jvp(lambda q: grad(q, y), (o,), (u,))[1]  # noqa: E731
    return (
        loss(z, y),
        grad(z, y),
        jax.jacrev(grad)(z, y).reshape(z.size, z.size),
        hvp(z, u),
        jax.jvp(lambda o: hvp(o, u), (z,), (w,))[1],  # d/dt H(z + t w) u
    )


@jax.jit
def _derivatives(z, y, u, w):
    return [_derivatives_of(f, z, y, u, w) for f in (losses.cross_entropy, _reference)]


def test_derivatives_match_autodiff_of_log_softmax(getkey):
    # reverse over reverse, forward over reverse (the HVP) and a third derivative (used nowhere, but it
    # must stay exact) of the written-out JVP against plain autodiff of the textbook loss
    z, y = _logits_labels(getkey(), (2, 3))  # (batch, seq, vocab) logits, as a transformer's
    u, w = jax.random.normal(getkey(), z.shape), jax.random.normal(getkey(), z.shape)
    lib, ref = _derivatives(z, y, u, w)
    np.testing.assert_allclose(lib[0], ref[0], rtol=1e-13)
    for a, b in zip(lib[1:], ref[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(ref[3].ravel(), ref[2] @ u.ravel(), rtol=1e-12, atol=1e-15)
    # the output Hessian is block diagonal, (diag(p_i) - p_i p_i^T) / n per example
    np.testing.assert_allclose(lib[2], _closed_form_output_hessian(z), rtol=1e-12, atol=1e-15)


def _closed_form_output_hessian(z):
    p = np.asarray(jax.nn.softmax(z, axis=-1)).reshape(-1, K)
    blocks = [np.diag(q) - np.outer(q, q) for q in p]
    return jax.scipy.linalg.block_diag(*blocks) / p.shape[0]


def _model(key, lead, d=3, h=4):
    kx, k1, k2 = jax.random.split(key, 3)
    x = jax.random.normal(kx, (*lead, d))
    params = {"w1": jax.random.normal(k1, (d, h)), "w2": (jax.random.normal(k2, (h, K)),)}
    return (lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"][0]), params, x


def test_hvp_and_ggn_products_match_dense_references(getkey):
    # 3-D logits (batch, seq, vocab), as a transformer gives them, of a tanh network
    apply, params, x = _model(getkey(), (2, 3))
    _, y = _logits_labels(getkey(), (2, 3))
    flat, unravel = hl.tree.ravel(params)
    v = jax.random.normal(getkey(), flat.shape)
    lib_fn = losses.make_loss_fn(apply, "xent")
    ref_fn = lambda p, b: _reference(apply(p, b[0]), b[1])  # noqa: E731

    @jax.jit
    def products(params, x, y, v):
        Hv = hl.hvp(lib_fn, params, (x, y))(unravel(v))
        Gv = hl.ggn(apply, losses.output_loss("xent"), params, x, y)(unravel(v))
        J = jax.jacfwd(lambda w: apply(unravel(w), x).reshape(-1))(flat)
        return hl.tree.ravel(Hv)[0], hl.tree.ravel(Gv)[0], J

    Hv, Gv, J = products(params, x, y, v)
    H = testing.dense_hessian(ref_fn, params, (x, y))
    np.testing.assert_allclose(Hv, H @ v, rtol=1e-11, atol=1e-14)
    # GGN: J^T (diag(p) - p p^T)/n J v with J from jacfwd and the output Hessian written out
    H_out = _closed_form_output_hessian(apply(params, x))
    np.testing.assert_allclose(Gv, J.T @ (H_out @ (J @ v)), rtol=1e-11, atol=1e-14)


def test_bad_labels_under_jit_give_nan_loss_finite_gradient_and_nan_ggn(getkey):
    apply, params, x = _model(getkey(), (4,))
    z = apply(params, x)

    @jax.jit
    def run(y):
        ggn = hl.ggn(apply, losses.cross_entropy, params, x, y)(params)
        return losses.cross_entropy(z, y), jax.grad(losses.cross_entropy)(z, y), ggn

    keep = jnp.array([0, 2, 3])
    for bad in (-1, K):
        y = jnp.array([0, bad, 2, K - 1])
        loss, g, ggn = run(y)
        assert np.isnan(loss)
        good = jax.grad(_reference)(z[keep], y[keep]) * 3 / 4  # the mean is still over 4
        np.testing.assert_allclose(g[keep], good, rtol=1e-12)
        np.testing.assert_array_equal(g[1], 0.0)  # the flagged example teaches nothing
        assert all(np.isnan(leaf).all() for leaf in jax.tree.leaves(ggn))


def _old_cross_entropy(logits, labels):
    """The former label path (log_softmax + take_along_axis), for the memory contrast only."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0])


def test_ggn_product_keeps_at_most_one_more_logits_copy_than_the_gradient():
    # float32 logits (32 tokens x 1024 classes) of a linear readout; temporaries counted in
    # logits arrays. Measured on XLA:CPU: gradient 1.0 (the logits), GGN product 2.0 (the
    # logits and J v; H_out J v is fused with them). The former loss (the contrast below, its
    # gather transposing to a scatter, log_softmax's copies) kept gradient 2.0, GGN 4.0.
    n, k, d = 32, 1024, 8
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, k), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, k, jnp.int32)
    apply = lambda w, x: x @ w  # noqa: E731
    logits = n * k * 4

    def temps(loss):
        def grad(w, x, y):
            return jax.grad(lambda q: loss(apply(q, x), y))(w)

        def ggn(w, x, y):
            return hl.ggn(apply, loss, w, x, y)(w)

        return [
            jax.jit(f).lower(w, x, y).compile().memory_analysis().temp_size_in_bytes / logits
            for f in (grad, ggn)
        ]

    grad, ggn = temps(losses.cross_entropy)
    assert ggn <= grad + 1.5, (grad, ggn)
    old_grad, old_ggn = temps(_old_cross_entropy)
    assert old_ggn > old_grad + 1.5, (old_grad, old_ggn)
