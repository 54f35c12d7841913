"""Losses against hand-written numpy formulas; label encodings; the loss_fn adaptor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_lab as hl
from hessian_lab import losses, models

RNG = np.random.default_rng(0)
N, K = 7, 5
OUT = RNG.normal(size=(N, K))
LABELS = RNG.integers(K, size=N)
ONE_HOT = np.eye(K)[LABELS]


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_mse_matches_numpy_for_both_normalizations():
    y = RNG.normal(size=(N, K))
    per_example = 0.5 * np.mean(np.sum((OUT - y) ** 2, axis=1))
    per_output = 0.5 * np.sum((OUT - y) ** 2) / (N * K)
    np.testing.assert_allclose(losses.mse(OUT, y), per_example, rtol=1e-14)
    np.testing.assert_allclose(
        losses.mse(OUT, y, normalization="per_output"), per_output, rtol=1e-14
    )
    # the conventions differ by the number of outputs
    np.testing.assert_allclose(per_example / per_output, K, rtol=1e-14)


def test_mse_int_labels_equal_one_hot():
    for norm in losses.MSE_NORMALIZATIONS:
        a = losses.mse(OUT, LABELS, normalization=norm)
        b = losses.mse(OUT, ONE_HOT, normalization=norm)
        np.testing.assert_allclose(a, b, rtol=1e-14)
    jitted = jax.jit(losses.mse, static_argnames="normalization")
    np.testing.assert_allclose(jitted(OUT, LABELS), losses.mse(OUT, ONE_HOT), rtol=1e-14)


def test_cross_entropy_matches_numpy():
    expected = -np.mean(_np_log_softmax(OUT)[np.arange(N), LABELS])
    np.testing.assert_allclose(losses.cross_entropy(OUT, LABELS), expected, rtol=1e-13)
    np.testing.assert_allclose(losses.cross_entropy(OUT, ONE_HOT), expected, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(losses.cross_entropy)(OUT, LABELS), expected, rtol=1e-13)
    # soft targets and large logits (stability)
    p = RNG.dirichlet(np.ones(K), size=N)
    expected_soft = -np.mean(np.sum(p * _np_log_softmax(OUT), axis=1))
    np.testing.assert_allclose(losses.cross_entropy(OUT, p), expected_soft, rtol=1e-13)
    assert np.isfinite(losses.cross_entropy(1e4 * OUT, LABELS))


def test_sequence_outputs_average_over_all_positions():
    logits = RNG.normal(size=(3, 4, K))
    tokens = RNG.integers(K, size=(3, 4))
    expected = -np.mean(np.take_along_axis(_np_log_softmax(logits), tokens[..., None], -1))
    np.testing.assert_allclose(losses.cross_entropy(logits, tokens), expected, rtol=1e-13)
    expected_mse = 0.5 * np.mean(np.sum((logits - np.eye(K)[tokens]) ** 2, axis=-1))
    np.testing.assert_allclose(losses.mse(logits, tokens), expected_mse, rtol=1e-14)


def test_accuracy():
    expected = np.mean(OUT.argmax(1) == LABELS)
    np.testing.assert_allclose(losses.accuracy(OUT, LABELS), expected)
    np.testing.assert_allclose(losses.accuracy(OUT, ONE_HOT), expected)
    np.testing.assert_allclose(losses.accuracy(ONE_HOT, LABELS), 1.0)


def test_make_loss_fn_gives_mean_loss_and_gradients(getkey):
    net = models.mlp(3, K, depth=1, width=6)
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (N, 3))
    out = net.apply(params, x)
    for loss, kw, ref in [
        ("mse", {}, losses.mse(out, LABELS)),
        (
            "mse",
            {"normalization": "per_output"},
            losses.mse(out, LABELS, normalization="per_output"),
        ),
        ("xent", {}, losses.cross_entropy(out, LABELS)),
    ]:
        loss_fn = losses.make_loss_fn(net.apply, loss, **kw)
        value, g = jax.jit(jax.value_and_grad(loss_fn))(params, (x, LABELS))
        np.testing.assert_allclose(value, ref, rtol=1e-12)
        assert jax.tree.structure(g) == jax.tree.structure(params)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: losses.mse(OUT, OUT, normalization="sum"), "normalization.*per_output"),
        (lambda: losses.mse(OUT, OUT[:, :2]), "targets"),
        (lambda: losses.mse(OUT, LABELS[:3]), "targets"),
        (lambda: losses.cross_entropy(OUT, LABELS[:, None]), "labels"),
        (lambda: losses.accuracy(OUT[:, :1], LABELS), "k >= 2"),
        (lambda: losses.make_loss_fn(lambda p, x: x, "hinge"), "loss.*'xent'"),
        (lambda: losses.make_loss_fn(lambda p, x: x, "xent", normalization="per_output"), "xent"),
        (lambda: losses.make_loss_fn(lambda p, x: x, "mse", normalization="mean"), "normalization"),
    ],
)
def test_bad_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_losses_keep_float64():
    assert losses.mse(jnp.asarray(OUT), LABELS).dtype == jnp.float64


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_target_checks_work_inside_an_eager_lanczos_scan(loss):
    # An eager top_eigs traces its matvec inside lax.scan: the loss closes over concrete labels,
    # whose checks must still run (not fail on a staged jnp bool) and still refuse bad labels.
    fn = losses.make_loss_fn(lambda p, x: x @ p, loss)
    x = jax.random.normal(jax.random.key(0), (6, 3))
    p, y = jnp.zeros((3, 4)), jnp.array([0, 1, 2, 3, 0, 1])
    H = hl.hvp(fn, p, (x, y))
    dense = jax.hessian(lambda q: fn(q, (x, y)))(p).reshape(12, 12)
    top = hl.top_eigs(H, jnp.ones((3, 4)), k=1, num_iters=12).values[0]
    np.testing.assert_allclose(float(top), float(np.linalg.eigvalsh(dense)[-1]), rtol=1e-5)
    with pytest.raises(ValueError, match=r"labels|targets"):
        hl.top_eigs(hl.hvp(fn, p, (x, y.at[0].set(4))), jnp.ones((3, 4)), k=1, num_iters=3)
