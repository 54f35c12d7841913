"""CNNs with BatchNorm / LayerNorm and the ResNet: forward passes against a numpy hand computation,
BatchNorm's train and eval modes and its running statistics against their formulas, and the top
Hessian eigenvalue of the stateful losses (Lanczos on the library's operator) against a dense
``jax.hessian`` + ``eigh``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import hessian_lab as hl
from hessian_lab import models, population
from hessian_lab.studies import problems

EPS = 1e-5
RNG = np.random.default_rng(3)
X = RNG.normal(size=(5, 6, 6, 2))  # 6 -> 3 -> 1 through the pools (the odd row is dropped)
Y = RNG.normal(size=(5, 3))


# --- a numpy forward, written from the definitions ------------------------------------------


def np_conv(h, w):
    """3x3 "SAME" cross-correlation, NHWC x HWIO."""
    n, hh, ww, _ = h.shape
    p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, hh, ww, w.shape[-1]))
    for a in range(3):
        for b in range(3):
            out += np.einsum("nijc,co->nijo", p[:, a : a + hh, b : b + ww], w[a, b])
    return out


def np_pool(h):
    hh, ww = h.shape[1:3]
    if min(hh, ww) < 2:
        return h
    h = h[:, : hh // 2 * 2, : ww // 2 * 2]
    return 0.25 * (h[:, ::2, ::2] + h[:, 1::2, ::2] + h[:, ::2, 1::2] + h[:, 1::2, 1::2])


def np_norm(h, p, kind, stats=None):
    """Return (normalised h, the batch's (mean, biased var) per channel or None)."""
    if kind == "layernorm":
        mean = h.mean(axis=(1, 2, 3), keepdims=True)
        var = ((h - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
        batch = None
    elif stats is None:  # BatchNorm, train mode
        mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
        batch = (mean, var)
    else:  # BatchNorm, eval mode
        mean, var, batch = stats[0], stats[1], None
    return (h - mean) / np.sqrt(var + EPS) * p["scale"] + p["shift"], batch


def np_cnn(params, x, norm, running=None):
    """The depth-2 tanh CNN by hand: conv (+ bias | + norm), tanh, pool per layer, mean, dense."""
    h, batches = x, []
    for i, layer in enumerate(params["conv"]):
        h = np_conv(h, layer["w"])
        if norm == "none":
            h = h + layer["b"]
        else:
            stats = None if running is None else running[i]
            h, b = np_norm(h, params["norm"][i], norm, stats)
            batches.append(b)
        h = np_pool(np.tanh(h))
    out = h.mean(axis=(1, 2)) @ params["readout"]["w"] + params["readout"]["b"]
    return out, batches


def np_resnet(params, x):
    """The depth-1 tanh ResNet (BatchNorm, train mode) by hand."""

    def layer(i, h):
        return np_norm(np_conv(h, params["conv"][i]["w"]), params["norm"][i], "batchnorm")[0]

    h = np.tanh(layer(0, x))
    h = np_pool(np.tanh(h + layer(2, np.tanh(layer(1, h)))))
    return h.mean(axis=(1, 2)) @ params["readout"]["w"] + params["readout"]["b"]


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _perturbed(params, key):
    """Params with the norms' scale and shift moved off 1 and 0 (so they are exercised)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [a + 0.3 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)],
    )


def _cnn(norm, **kw):
    return models.cnn((6, 6, 2), 3, depth=2, width=3, activation="tanh", norm=norm, **kw)


# --- forward passes --------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "layernorm"])
def test_stateless_cnn_matches_hand_forward(norm):
    net = _cnn(norm, sigma_b=0.5)
    assert isinstance(net, models.Model)
    params = _perturbed(net.init(jax.random.key(0)), jax.random.key(1))
    want, _ = np_cnn(_np(params), X, norm)
    np.testing.assert_allclose(jax.jit(net.apply)(params, X), want, rtol=1e-12, atol=1e-12)
    # a normalised conv has no bias; an unnormalised one does
    assert ("b" in params["conv"][0]) == (norm == "none") and ("norm" in params) != (norm == "none")


def test_batchnorm_train_and_eval_modes_and_running_statistics():
    m = 0.7
    net = _cnn("batchnorm", momentum=m)
    assert isinstance(net, hl.StatefulModel)
    params = _perturbed(net.init(jax.random.key(0)), jax.random.key(1))
    apply = jax.jit(net.apply, static_argnames="train")
    # train mode: the batch's statistics, whatever the running ones
    out, new = apply(params, net.state, X, train=True)
    want, batches = np_cnn(_np(params), X, "batchnorm")
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    other = jax.tree.map(lambda a: a + 2.0, net.state)
    np.testing.assert_allclose(apply(params, other, X, train=True)[0], out, rtol=1e-12)
    # running statistics: momentum * old + (1 - momentum) * batch (biased variance)
    for i, (mean, var) in enumerate(batches):
        old = net.state["bn"][i]
        np.testing.assert_allclose(new["bn"][i]["mean"], m * old["mean"] + (1 - m) * mean,
                                   rtol=1e-12, atol=1e-14)  # fmt: skip
        np.testing.assert_allclose(new["bn"][i]["var"], m * old["var"] + (1 - m) * var,
                                   rtol=1e-12)  # fmt: skip
    # eval mode: the running statistics, returned unchanged
    out_eval, same = apply(params, new, X, train=False)
    running = [(np.asarray(s["mean"]), np.asarray(s["var"])) for s in new["bn"]]
    want_eval, _ = np_cnn(_np(params), X, "batchnorm", running)
    np.testing.assert_allclose(out_eval, want_eval, rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(out_eval - out)) > 1e-3  # the modes differ at these statistics


def test_resnet_matches_hand_forward():
    net = models.resnet((6, 6, 2), 3, depth=1, width=3, activation="tanh")
    params = _perturbed(net.init(jax.random.key(2)), jax.random.key(3))
    out, state = jax.jit(functools.partial(net.apply, train=True))(params, net.state, X)
    np.testing.assert_allclose(out, np_resnet(_np(params), X), rtol=1e-12, atol=1e-12)
    assert len(params["conv"]) == len(state["bn"]) == 3


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: _cnn("groupnorm"), "^norm: .*'batchnorm'"),
        (lambda: _cnn("batchnorm", momentum=1.0), r"^momentum: must be in \[0, 1\)"),
        (lambda: models.resnet((6, 6, 2), 3, depth=0, width=3), "^depth"),
        (lambda: models.resnet((6, 6), 3, depth=1, width=3), "^in_shape"),
    ],
)
def test_bad_norm_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --- curvature: Lanczos on the stateful operator against dense ---------------------------------


def _mse(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


@functools.partial(jax.jit, static_argnames=("apply", "mode"))
def _lanczos_and_dense(apply, params, state, mode):
    loss = hl.curvature_loss(hl.stateful_loss(apply, _mse), state, mode=mode)
    dim = ravel_pytree(params)[0].size
    op = hl.full_data_hvp(loss, params, (X, Y), chunk_size=X.shape[0])
    top = hl.top_eigs(op, params, k=1, num_iters=dim).values[0]
    # the reference: the loss written directly on apply, differentiated densely
    flat, unravel = ravel_pytree(params)

    def f(v):
        return _mse(apply(unravel(v), state, X, train=mode == "train")[0], Y)

    return top, jnp.linalg.eigvalsh(jax.hessian(f)(flat))[-1]


@pytest.mark.parametrize(("arch", "mode"), [("cnn", "train"), ("cnn", "eval"), ("resnet", "train")])
def test_top_hessian_eigenvalue_equals_dense(arch, mode):
    if arch == "cnn":
        net = models.cnn((6, 6, 2), 3, depth=2, width=2, activation="tanh", norm="batchnorm")
    else:
        net = models.resnet((6, 6, 2), 3, depth=1, width=2, activation="tanh")
    params = _perturbed(net.init(jax.random.key(4)), jax.random.key(5))
    # running statistics away from their start, so that eval mode is not train mode
    _, state = net.apply(params, net.state, 2 * X + 1, train=True)
    top, dense = _lanczos_and_dense(net.apply, params, state, mode)
    assert abs(float(top) - float(dense)) <= 1e-8 * abs(float(dense))


# --- the studies' runner trains a stateful problem ------------------------------------------


def test_sharpness_runner_trains_batchnorm_like_a_hand_loop():
    """Loss and sharpness of a cnn-bn problem against plain GD with the statistics by hand.

    Measured in eval mode too: then the sharpness depends on the running statistics the runner
    carries from step to step, so this checks that the state is threaded.
    """
    prob = problems.make_problem(n_train=16, depth=1, width=2, arch="cnn-bn")
    assert isinstance(prob.loss_fn, hl.StatefulLoss) and prob.state is not None
    lr, steps, every = 0.5, 7, 3
    apply, (x, y) = prob.model.apply, prob.data

    def train_loss(p, s):
        out, new = apply(p, s, x, train=True)
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1)), new

    @jax.jit
    def hand_step(p, s):
        (loss, new), g = jax.value_and_grad(train_loss, has_aux=True)(p, s)
        return jax.tree.map(lambda a, b: a - lr * b, p, g), new, loss

    p, s, points, losses = prob.model.init(population.member_keys(0)[0]), prob.state, [], []
    for _ in range(steps):
        points.append((p, s))
        p, s, loss = hand_step(p, s)
        losses.append(float(loss))
    dim = ravel_pytree(p)[0].size
    for mode in ("train", "eval"):
        measured = prob._replace(loss_fn=prob.loss_fn.with_mode(mode))
        runs = problems.SharpnessRunner(measured, "gd", every=every, num_iters=dim).train(
            [lr], num_steps=steps
        )
        np.testing.assert_allclose(runs.loss[0], losses, rtol=1e-10)
        for k, t in enumerate(runs.steps):
            want = float(_dense_top(apply, *points[t], prob.data, mode == "train"))
            assert abs(runs.sharpness[0, k] - want) <= 1e-8 * abs(want), (mode, t)


@functools.partial(jax.jit, static_argnames=("apply", "train"))
def _dense_top(apply, params, state, data, train):
    flat, unravel = ravel_pytree(params)
    x, y = data
    f = lambda v: _mse(apply(unravel(v), state, x, train=train)[0], y)  # noqa: E731
    return jnp.linalg.eigvalsh(jax.hessian(f)(flat))[-1]


def test_make_problem_archs_and_downsampling():
    x = RNG.normal(size=(2, 5, 7, 1))
    pooled = problems.pool_images(x, 2)  # 5x7 -> 2x3, the odd row and column dropped
    np.testing.assert_allclose(pooled[1, 1, 2, 0], x[1, 2:4, 4:6, 0].mean(), rtol=1e-14)
    assert pooled.shape == (2, 2, 3, 1)
    ln = problems.make_problem(n_train=8, depth=1, width=2, arch="cnn-ln", downsample=2)
    assert ln.data[0].shape == (8, 4, 4, 1) and ln.state is None and callable(ln.loss_fn)
    res = problems.make_problem(n_train=8, depth=1, width=2, arch="resnet-bn")
    assert isinstance(res.loss_fn, hl.StatefulLoss) and len(res.state["bn"]) == 3
    for kw, field in [
        (dict(arch="vgg"), "arch"),
        (dict(downsample=2), "downsample"),  # the MLP
        (dict(arch="cnn", downsample=9), "downsample"),
        (dict(arch="resnet-bn", param="ntk"), "param"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}"):
            problems.make_problem(n_train=8, depth=1, width=2, **kw)
