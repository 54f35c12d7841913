"""The documented user-loop examples run, at tiny sizes, and their sharpness is right."""

import json
import runpy
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _main(name):
    return runpy.run_path(str(EXAMPLES / name))["main"]


def test_plain_loop(capsys):
    top = _main("plain_loop.py")(num_steps=11, n=16)
    assert np.isfinite(top) and top > 0
    assert "sharpness" in capsys.readouterr().out


def test_flax_loop():
    pytest.importorskip("flax")
    lams = _main("flax_loop.py")(num_steps=11, n=16)
    assert np.isfinite(lams[0]) and np.isfinite(lams[10]) and np.isnan(lams[1])


def test_equinox_loop():
    pytest.importorskip("equinox")
    assert np.isfinite(_main("equinox_loop.py")(num_steps=11, n=16))


# --- the "sharpness of your own network" examples (docs/own_network.md), each against a dense
# Hessian of the same loss written here with the framework's own apply -----------------------------


def _dense_top(loss, params, k=1):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda t: loss(unravel(t))))(flat)
    return np.linalg.eigvalsh(np.asarray(hess))[::-1][:k]


def _xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], axis=-1))


def test_resnet_flax_example_train_and_eval_sharpness_equal_dense():
    pytest.importorskip("flax")
    ns = runpy.run_path(str(EXAMPLES / "resnet_flax.py"))
    out = ns["main"](n=8, width=2, blocks=1, num_iters=60)
    p, params = out["problem"], out["params"]
    module, (x, y) = ns["ResNet"](2, 1), p.data
    stats = p.state  # the initial running statistics

    def loss(theta, train):
        variables = {"params": theta, **stats}
        if train:
            return _xent(module.apply(variables, x, train=True, mutable=["batch_stats"])[0], y)
        return _xent(module.apply(variables, x, train=False), y)

    for mode in ("train", "eval"):
        ref = _dense_top(lambda t, m=mode: loss(t, m == "train"), params)[0]
        np.testing.assert_allclose(out["sharpness"][mode], ref, rtol=1e-8, err_msg=mode)
    assert abs(out["sharpness"]["train"] / out["sharpness"]["eval"] - 1) > 1e-3


def test_transformer_equinox_example_sharpness_equals_dense():
    eqx = pytest.importorskip("equinox")
    ns = runpy.run_path(str(EXAMPLES / "transformer_equinox.py"))
    out = ns["main"](n=4, width=4, num_iters=80)
    p, params = out["problem"], out["params"]
    model, _, (x, y) = ns["make"](seed=0, n=4, width=4)  # the entry point's own module and data
    static = eqx.partition(model, eqx.is_inexact_array)[1]
    ref = _dense_top(lambda t: _xent(jax.vmap(eqx.combine(t, static))(x), y), params)[0]
    np.testing.assert_allclose(out["sharpness"], ref, rtol=1e-8)
    np.testing.assert_array_equal(p.data[0], x)


def test_my_problem_example_on_the_command_line_equals_dense():
    pytest.importorskip("flax")
    from typer.testing import CliRunner

    from hessian_lab import data, problem
    from hessian_lab.cli.app import app

    entry = f"{EXAMPLES / 'my_problem.py'}:make"
    r = CliRunner().invoke(app, ["sharpness", "--problem", entry, "--n", "16", "--arg", "width=3",
                                 "-k", "2", "--num-iters", "40", "--trace-matvecs", "4",
                                 "--no-density", "--x64", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])["eigenvalues"]
    ds = data.load_data("digits", n=16)
    params = problem.build(entry, data=ds, args={"width": 3}).model.init(
        jax.random.split(jax.random.key(0), 4)[0]  # the command's initialisation (seed 0)
    )
    x, y = jnp.asarray(ds.x.reshape(16, -1), jnp.float64), jnp.eye(10)[ds.y]
    ref = _dense_top(
        lambda t: 0.5 * jnp.mean(jnp.sum((jnp.tanh(x @ t["w1"]) @ t["w2"] - y) ** 2, -1)),
        params,
        k=2,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-8)


def test_resnet_sharpness_on_the_command_line_with_convs_as_matmuls_equals_native(monkeypatch):
    """--convs matmul: the same top eigenvalues (float64) as the library convolutions, whose
    path the test above checks against a dense Hessian; a bad value is refused by name."""
    pytest.importorskip("flax")
    from typer.testing import CliRunner

    import hessian_lab as hl
    from hessian_lab.cli.app import app

    wrapped, rewrite = [], hl.convs_as_matmuls

    def spy(fn):  # the option must reach the operator: count the losses it rewrites
        wrapped.append(fn)
        return rewrite(fn)

    monkeypatch.setattr(hl, "convs_as_matmuls", spy)

    entry = f"{EXAMPLES / 'resnet_flax.py'}:make"
    got = {}
    for convs in ("native", "matmul"):
        r = CliRunner().invoke(app, ["sharpness", "--problem", entry, "--n", "8", "--arg", "width=2",
                                     "-k", "2", "--num-iters", "30", "--trace-matvecs", "4",
                                     "--no-density", "--x64", "--json", "--convs", convs])  # fmt: skip
        assert r.exit_code == 0, r.output
        got[convs] = json.loads(r.stdout.strip().splitlines()[-1])["eigenvalues"]
    np.testing.assert_allclose(got["matmul"], got["native"], rtol=1e-9)
    assert len(wrapped) == 1  # native left the loss alone; matmul rewrote it once
    bad = CliRunner().invoke(app, ["sharpness", "--problem", entry, "--convs", "im2col"])
    assert bad.exit_code == 2 and "--convs" in bad.output and "im2col" in bad.output
