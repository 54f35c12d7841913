"""Model state: BatchNorm (linen, nnx, equinox) and dropout through operators, callbacks, trainer.

Every curvature number is checked against a dense ``jax.hessian`` + ``eigh`` of the same loss
written with the framework's own API (not through the adapters); the trainer against a
hand-written optax loop that updates the running statistics as flax does.
"""

import functools
import runpy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import hessian_lab as hl
from hessian_lab import callbacks as cb
from hessian_lab import optim, population, problem, trainer
from hessian_lab._step import DROPOUT_STREAM

nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
F64 = jnp.float64


class LinenCNN(nn.Module):
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Conv(3, (3, 3), param_dtype=F64)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.8, param_dtype=F64)(h)
        h = nn.Dropout(self.rate, deterministic=not train)(jnp.tanh(h))
        return nn.Dense(2, param_dtype=F64)(h.mean((1, 2)))


def _mse(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def _data(n=8, layout="nhwc"):
    x = jax.random.normal(jax.random.key(1), (n, 5, 5, 1), F64)
    y = jax.random.normal(jax.random.key(2), (n, 2), F64)
    return (jnp.moveaxis(x, -1, 1) if layout == "nchw" else x), y


def _dense_top(f, params):
    flat, unravel = ravel_pytree(params)
    return np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda v: f(unravel(v))))(flat)))[-1]


def _top(loss_fn, params, data):
    """Our sharpness: Lanczos over the whole space on the one-chunk full-data product."""

    def top(params, data):
        n, dim = data[0].shape[0], ravel_pytree(params)[0].size
        op = hl.full_data_hvp(loss_fn, params, data, chunk_size=n)
        return hl.top_eigs(op, params, k=1, num_iters=dim).values[0]

    return float(jax.jit(top)(params, data))


def _linen_ref(module, params, stats, data, train):
    v, (x, y) = {"params": params, "batch_stats": stats}, data
    if train:
        return _mse(module.apply(v, x, train=True, mutable=["batch_stats"])[0], y)
    return _mse(module.apply(v, x, train=False), y)


@functools.cache  # one model, one point, shared by the tests (fewer compiles)
def _linen(rate=0.0):
    data = _data()
    sm = hl.stateful_model(LinenCNN(rate), data[0])
    params = sm.init(jax.random.key(3))
    # running statistics away from their initial values, so eval and train mode differ
    _, state = jax.jit(lambda p, s, x: sm.apply(p, s, x, train=True))(
        params, sm.state, 2 * data[0] + 1
    )
    return sm, params, state, data


@functools.partial(jax.jit, static_argnames="train")
def _linen_hessian(params, stats, data, train):
    """Dense Hessian of the linen CNN's loss (dropout off), written with flax's own API."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda u: _linen_ref(LinenCNN(), unravel(u), stats, data, train))(flat)


def _linen_dense_top(params, stats, data, train=True):
    return np.linalg.eigvalsh(np.asarray(_linen_hessian(params, stats, data, train)))[-1]


# Train mode: the trainer test checks the sharpness callback at a trained point against dense.
@pytest.mark.parametrize("mode", ["eval"])
def test_linen_batchnorm_top_eig_equals_dense(mode):
    sm, params, state, data = _linen()
    loss = hl.curvature_loss(hl.stateful_loss(sm.apply, _mse), state, mode=mode)
    want = _linen_dense_top(params, state["batch_stats"], data, mode == "train")
    assert abs(_top(loss, params, data) - want) <= 1e-8 * abs(want)
    other = _linen_ref(LinenCNN(), params, state["batch_stats"], data, mode != "train")
    assert abs(float(loss(params, data)) - float(other)) > 1e-3  # the two modes differ here


def test_chunked_train_mode_is_refused_or_per_chunk():
    sm, params, state, data = _linen()
    loss = hl.stateful_loss(sm.apply, _mse)
    with pytest.raises(ValueError, match=r"^chunk_size: 4 < n=8 .*BatchNorm"):
        hl.full_data_hvp(hl.curvature_loss(loss, state), params, data, chunk_size=4)
    v = jax.tree.map(jnp.ones_like, params)

    @functools.partial(jax.jit, static_argnames=("mode", "c"))
    def product(params, state, data, v, mode, c):
        at = hl.curvature_loss(loss, state, mode=mode, per_chunk=True)
        return ravel_pytree(hl.full_data_hvp(at, params, data, chunk_size=c)(v))[0]

    # per_chunk=True: the mean of the chunks' own train-mode Hessians (dense, chunk by chunk)
    halves = [(data[0][i : i + 4], data[1][i : i + 4]) for i in (0, 4)]
    dense = sum(_linen_hessian(params, state["batch_stats"], b, True) for b in halves) / 2
    got = product(params, state, data, v, "train", 4)
    np.testing.assert_allclose(got, dense @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-13)
    # eval mode: an ordinary mean over examples, so chunking changes nothing
    a, b = (product(params, state, data, v, "eval", c) for c in (3, 8))
    np.testing.assert_allclose(a, b, rtol=1e-10)


def test_trainer_updates_running_statistics_like_a_hand_loop():
    sm, params, _, data = _linen()
    module, opt, state0 = LinenCNN(), optax.sgd(0.1, momentum=0.9), sm.state

    @jax.jit
    def hand_step(p, s, stats):
        def f(p):
            v = {"params": p, "batch_stats": stats}
            out, new = module.apply(v, data[0], train=True, mutable=["batch_stats"])
            return _mse(out, data[1]), new["batch_stats"]

        (loss, new), g = jax.value_and_grad(f, has_aux=True)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, new, loss, _linen_ref(module, p, stats, data, False)

    # flax creates the statistics in float32 and its first update promotes them; the adapter
    # starts them in float64 (a float32 start differs by float32 rounding of the momentum)
    p, s, stats, want, points = params, opt.init(params), state0["batch_stats"], [], []
    for _ in range(7):
        points.append((p, stats))
        p, s, stats, loss, ev = hand_step(p, s, stats)
        want.append((float(loss), float(ev)))
    loss = hl.stateful_loss(sm.apply, _mse)
    dim = ravel_pytree(params)[0].size
    cbs = [
        cb.full_loss(loss.with_mode("eval"), name="eval_loss"),
        cb.sharpness(loss, every=5, num_iters=dim),
    ]
    res = trainer.train(
        trainer.make_step(loss, opt, callbacks=cbs, chunk_size=3),
        params,
        data,
        num_steps=7,
        state=state0,
    )
    np.testing.assert_allclose(res.history["loss"], [w[0] for w in want], rtol=1e-12)
    np.testing.assert_allclose(res.history["eval_loss"], [w[1] for w in want], rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves((res.params, res.state["batch_stats"])),
        jax.tree.leaves((p, stats)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    p5, stats5 = points[5]
    lam = _linen_dense_top(p5, stats5, data)
    assert abs(res.history["sharpness"][5] - lam) <= 1e-8 * abs(lam)
    with pytest.raises(ValueError, match=r"^state: the step trains a StatefulLoss"):
        trainer.train(trainer.make_step(loss, opt), params, data, num_steps=1)


def test_population_vmaps_the_state():
    sm, _, _, data = _linen()
    loss = hl.stateful_loss(sm.apply, _mse)
    opt = optim.make_optimizer("gd", learning_rate=0.1)
    kw = dict(learning_rates=[0.05, 0.2], seeds=[0, 1], num_steps=4, state=sm.state)
    runs = [
        population.train_population(
            population.make_step(loss, opt, mode=m, chunk_size=2), sm.init, data, **kw
        )
        for m in ("loop", "vmap")
    ]
    np.testing.assert_allclose(runs[1].metrics["loss"], runs[0].metrics["loss"], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(runs[1].state), jax.tree.leaves(runs[0].state), strict=True):
        assert a.shape[0] == 2
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_dropout_is_off_in_curvature_and_on_in_training():
    sm, params, state, data = _linen(rate=0.5)
    loss = hl.stateful_loss(sm.apply, _mse, dropout=True)
    # off: exactly the model without dropout (rate 0), whatever flag the module's train gives it
    v = jax.random.normal(jax.random.key(6), ravel_pytree(params)[0].shape, F64)
    unravel = ravel_pytree(params)[1]
    hv = jax.jit(lambda p, v: hl.hvp(hl.curvature_loss(loss, state), p, data)(unravel(v)))
    want = _linen_hessian(params, state["batch_stats"], data, True) @ v
    np.testing.assert_allclose(ravel_pytree(hv(params, v))[0], want, rtol=1e-10, atol=1e-13)
    # on, with a fixed key: one mask, the flax apply with that dropout key
    variables = {"params": params, **state}

    @jax.jit
    def flax_masked(params, key):
        out = LinenCNN(0.5).apply(
            variables | {"params": params}, data[0], train=True, mutable=["batch_stats"],
            rngs={"dropout": key},
        )[0]  # fmt: skip
        return _mse(out, data[1])

    key = jax.random.key(5)
    fixed = jax.jit(lambda p: hl.curvature_loss(loss, state, dropout=key)(p, data))
    np.testing.assert_allclose(fixed(params), flax_masked(params, key), rtol=1e-12)
    # training draws the documented key at each step
    key0 = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), DROPOUT_STREAM), 0)
    step = trainer.make_step(loss, optax.sgd(0.1))
    res = trainer.train(step, params, data, num_steps=1, state=state)
    np.testing.assert_allclose(res.history["loss"][0], flax_masked(params, key0), rtol=1e-12)


def test_determinism_probe_explains_a_loss_that_redraws_dropout():
    rng = np.random.default_rng(0)  # a host RNG: a new dropout mask at every call

    def redrawn(p, batch):
        keep = rng.random(batch[0].shape[0]) > 0.5
        return jnp.mean((jnp.where(keep, batch[0] @ p["w"], 0.0) - batch[1]) ** 2)

    p = {"w": jnp.ones(3)}
    data = (jax.random.normal(jax.random.key(0), (16, 3)), jnp.zeros(16))
    with pytest.raises(ValueError, match=r"not deterministic.*dropout.*curvature_loss"):
        hl.check_deterministic(hl.hvp(redrawn, p, data), p)
    sm, params, state, data = _linen(rate=0.5)  # dropout off in the curvature loss: passes
    op = hl.hvp(hl.curvature_loss(hl.stateful_loss(sm.apply, _mse), state), params, data)
    hl.check_deterministic(jax.jit(op.fn), jax.tree.map(jnp.ones_like, params))


class NNXNet(nnx.Module):
    def __init__(self, rngs, rate=0.0):
        self.conv = nnx.Conv(1, 3, (3, 3), param_dtype=F64, rngs=rngs)
        self.bn = nnx.BatchNorm(3, momentum=0.8, param_dtype=F64, rngs=rngs)
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.lin = nnx.Linear(3, 2, param_dtype=F64, rngs=rngs)

    def __call__(self, x):
        return self.lin(self.drop(jnp.tanh(self.bn(self.conv(x)))).mean((1, 2)))


class EqxNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    lin: eqx.nn.Linear

    def __init__(self, key, rate=0.0):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 3, 3, padding=1, key=k1)
        self.bn = eqx.nn.BatchNorm(3, axis_name="batch", momentum=0.8, mode="ema", dtype=F64)
        self.drop = eqx.nn.Dropout(rate)
        self.lin = eqx.nn.Linear(3, 2, key=k2)

    def __call__(self, x, state, *, key=None):
        h, state = self.bn(self.conv(x), state)
        return self.lin(self.drop(jnp.tanh(h), key=key).mean((1, 2))), state


# Train mode of both (and of dropout off in nnx) is checked on the examples' CNNs below.
@pytest.mark.parametrize("mode", ["eval"])
def test_nnx_and_equinox_batchnorm_top_eig_equals_dense(mode):
    train = mode == "train"
    data = _data()
    graphdef, params, rest = nnx.split(NNXNet(nnx.Rngs(0), rate=0.5), nnx.Param, ...)

    def nnx_ref(p, rest, data):
        m = nnx.merge(graphdef, p, rest, copy=True)
        m.train() if train else m.eval()
        m.drop.deterministic = True  # the reference: dropout off by hand
        return _mse(m(data[0]), data[1])

    sm = hl.stateful_model(nnx.merge(graphdef, params, rest), data[0])
    _, rest = sm.apply(params, sm.state, 2 * data[0] + 1, train=True)  # moved statistics
    loss = hl.curvature_loss(hl.stateful_loss(sm.apply, _mse), rest, mode=mode)
    want = _dense_top(lambda p: nnx_ref(p, rest, data), params)
    assert abs(_top(loss, params, data) - want) <= 1e-8 * abs(want)

    xe = _data(layout="nchw")
    model, st = eqx.nn.make_with_state(EqxNet)(jax.random.key(4))
    sm = hl.stateful_model((model, st), xe[0])
    _, st = sm.apply(sm.init(None), st, 2 * xe[0] + 1, train=True)
    p, static = eqx.partition(model, eqx.is_inexact_array)

    def eqx_ref(p):
        m = eqx.nn.inference_mode(eqx.combine(p, static), not train)
        out = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(xe[0], st)[0]
        return _mse(out, xe[1])

    loss = hl.curvature_loss(hl.stateful_loss(sm.apply, _mse), st, mode=mode)
    want = _dense_top(eqx_ref, p)
    assert abs(_top(loss, p, xe) - want) <= 1e-8 * abs(want)


def test_problem_build_takes_stateful_models_when_asked():
    xy = (np.ones((4, 5, 5, 1)), np.zeros((4, 2)))
    with pytest.raises(
        ValueError, match=r"^problem: the model holds state \(batch_stats\).*stateful=True"
    ):
        problem.build(lambda: (LinenCNN(), _mse, xy))
    p = problem.build(lambda: (LinenCNN(), "mse", xy), stateful=True)
    assert isinstance(p.model, hl.StatefulModel) and isinstance(p.loss_fn, hl.StatefulLoss)
    assert set(p.state) == {"batch_stats"}
    model, st = eqx.nn.make_with_state(EqxNet)(jax.random.key(4))
    with pytest.raises(ValueError, match=r"^problem: the model holds state \(eqx.nn.State\)"):
        problem.build(lambda: ((model, st), "mse", xy))
    with pytest.raises(ValueError, match=r"^mode: must be 'train' or 'eval'"):
        hl.stateful_loss(p.model.apply, "mse", mode="test")


@pytest.mark.parametrize("name", ["batchnorm_linen.py", "batchnorm_nnx.py", "batchnorm_equinox.py"])
def test_examples_sharpness_equals_dense(name):
    """Each example trains a tiny BatchNorm CNN; its train-mode sharpness is the dense one."""
    out = runpy.run_path(str(EXAMPLES / name))["main"](num_steps=6, n=8)
    want = _dense_top(out["loss_at"], out["params"])
    assert abs(out["sharpness"] - want) <= 1e-8 * abs(want), (out["sharpness"], want)
