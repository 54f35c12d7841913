"""A user's problem with model state (BatchNorm) in the studies (issue #15, items 1-2).

edge_of_stability, momentum and critical_sharpness thread the state; the other studies that take
a user's problem refuse it in one line before any work. Numbers are checked against a dense
``jax.hessian`` + ``numpy.linalg.eigh`` of the train-mode loss (batch statistics of the whole
training set), written out by hand here from the same parameters, and against a hand-written
GD loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import FLAX_BN_NET
from jax.flatten_util import ravel_pytree
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.population import member_keys

nn = pytest.importorskip("flax.linen")

PROBLEM = (
    FLAX_BN_NET
    + """

def loss(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def make(width=3):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 5))
    y = np.stack([np.tanh(x[:, 0] - x[:, 1]), x[:, 2] * x[:, 3]], axis=-1)
    return Net(width, outputs=2, momentum=0.8), loss, (x, y)
"""
)

SMALL = {"lrs": (0.5,), "num_steps": 21, "sharpness_every": 10, "lanczos_iters": 30,
         "flow_time": 0.0, "short_window": 5, "long_window": 10}  # fmt: skip


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    (root / "bn_problem.py").write_text(PROBLEM)
    return f"{root}/bn_problem.py:make"


def _data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 5))
    return x, np.stack([np.tanh(x[:, 0] - x[:, 1]), x[:, 2] * x[:, 3]], axis=-1)


def _init(seed=0, width=3):
    """The parameters the studies start from: flax's init at the member's key."""

    class Net(nn.Module):  # the problem file's network, to draw the same parameters
        @nn.compact
        def __call__(self, v, train: bool):
            h = nn.Dense(width, param_dtype=jnp.float64)(v)
            h = nn.BatchNorm(use_running_average=not train, param_dtype=jnp.float64)(h)
            return nn.Dense(2, param_dtype=jnp.float64)(jnp.tanh(h))

    x = jnp.asarray(_data()[0][:1])
    return Net().init(member_keys(seed)[0], x, train=False)["params"]


def _train_loss(p, x, y):
    """The train-mode loss written out: BatchNorm by the statistics of all of ``x``."""
    row = lambda layer, name: p[layer][name][None, :]  # noqa: E731
    h = x @ p["Dense_0"]["kernel"] + row("Dense_0", "bias")
    mu = h.mean(0, keepdims=True)
    var = ((h - mu) ** 2).mean(0, keepdims=True)
    h = (h - mu) / jnp.sqrt(var + 1e-5) * row("BatchNorm_0", "scale") + row("BatchNorm_0", "bias")
    out = jnp.tanh(h) @ p["Dense_1"]["kernel"] + row("Dense_1", "bias")
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1)), (mu[0], var[0])


def _gd(lr, steps, measure=(0,)):
    """Hand-written GD on the train-mode loss: losses, top Hessian eigenvalues at the steps
    ``measure``, and the running statistics after ``steps`` updates."""
    x, y = map(jnp.asarray, _data())
    flat, unravel = ravel_pytree(_init())
    f = lambda t: _train_loss(unravel(t), x, y)  # noqa: E731
    value_and_grad, hessian = jax.jit(jax.value_and_grad(f, has_aux=True)), jax.jit(jax.hessian(f))
    losses, tops = [], {}
    mean, var = jnp.zeros(3), jnp.ones(3)  # flax's running statistics at init, momentum 0.8
    for t in range(steps):
        if t in measure:
            tops[t] = np.linalg.eigvalsh(np.asarray(hessian(flat)[0]))[-1]
        (loss, (mu, v)), g = value_and_grad(flat)
        losses.append(float(loss))
        mean, var = 0.8 * mean + 0.2 * mu, 0.8 * var + 0.2 * v
        flat = flat - lr * g
    return np.asarray(losses), tops, (mean, var)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _run_eos(entry, out):
    """edge_of_stability's TINY at the SMALL settings on ``entry``, from the command line."""
    from hessian_lab.studies import edge_of_stability as eos

    text = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    sets = [a for k, v in SMALL.items() for a in ("--set", f"{k}={text(v)}")]
    r = _cli("study", "run", "edge_of_stability", "--preset", "tiny", "--out", out,
             "--no-report", "-q", "--set", f"problem={entry}", *sets)  # fmt: skip
    assert r.exit_code == 0, r.output
    return eos.load(out)


def test_edge_of_stability_on_a_batchnorm_problem(entry, tmp_path):

    res = _run_eos(entry, tmp_path / "eos")
    loss, top, _ = _gd(0.5, 21, measure=(0, 10, 20))
    np.testing.assert_allclose(res.loss[0], loss, rtol=1e-9)  # GD on the train-mode loss
    assert res.sharp_steps.tolist() == [0, 10, 20] and res.sharpness0[0] == res.sharpness[0, 0]
    np.testing.assert_allclose(res.sharpness[0], [top[t] for t in (0, 10, 20)], rtol=1e-6)


def test_critical_sharpness_takes_it_and_momentum_accepts_it(entry):
    from hessian_lab.studies import critical_sharpness as cs
    from hessian_lab.studies import momentum

    _, top, _ = _gd(0.5, 1)
    config = cs.TINY.__class__(problem=entry, gd_lrs=(0.5,), momentum_lrs=(), num_steps=2,
                               lanczos_iters=20, alignment_k=0)  # fmt: skip
    c = cs.run(config)
    np.testing.assert_allclose(c.sharpness[0, 0], top[0], rtol=1e-6)
    assert np.isfinite(c.critical_sharpness[0, 0]) and c.critical_sharpness[0, 0] > 0
    # momentum trains through edge_of_stability's engine (run above); its checks take the state
    momentum.check_inputs(momentum.Config(problem=entry, lanczos_iters=30))


def test_the_runs_carry_the_running_statistics(entry):
    from hessian_lab import optim, population
    from hessian_lab.studies import edge_of_stability as eos

    prob = eos.problem(eos.Config(problem=entry))  # the study's problem, and the trainer's step
    step = population.make_step(prob.loss_fn, optim.make_optimizer("gd", learning_rate=1.0),
                                mode="loop", chunk_size=5)  # fmt: skip
    res = population.train_population(
        step, prob.model.init, prob.data, learning_rates=np.array([0.5]),
        seeds=np.array([0]), num_steps=5, state=prob.state)  # fmt: skip
    _, _, (mean, var) = _gd(0.5, 5)
    stats = res.state["batch_stats"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"][0], mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stats["var"][0], var, rtol=1e-9)


@pytest.mark.parametrize(
    ("study", "sets"),
    [
        ("warmup", []),
        ("catapult", ["problem_widths=3"]),
        ("stochastic_eos", ["mlp_batch_sizes=8"]),
        ("early_phase_diagram", ["x_arg=width", "x_values=2,3"]),
    ],
)
def test_the_other_studies_refuse_it_in_one_line_before_any_work(entry, tmp_path, study, sets):
    out = tmp_path / "bad"
    r = _cli("study", "run", study, "--preset", "tiny", "--out", out, "-q", "--set",
             f"problem={entry}", *[a for s in sets for a in ("--set", s)])  # fmt: skip
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: problem: ") and r.stderr.count("\n") == 1, r.stderr
    assert f"which {study} does not carry" in r.stderr and "edge_of_stability" in r.stderr
    assert not out.exists()


def test_a_library_statefulmodel_is_taken_as_it_is(tmp_path):
    # hl.models.cnn(norm="batchnorm") returns a StatefulModel: built with state, its loss is the
    # train-mode loss of the batch (checked against the model's own apply), refused without
    from hessian_lab import curvature_loss
    from hessian_lab.studies import problems_user as pu

    path = tmp_path / "bn_cnn.py"
    path.write_text(
        "import hessian_lab as hl\n"
        "def make(data, width=2):\n"
        "    net = hl.models.cnn((8, 8, 1), 10, depth=1, width=width, norm='batchnorm')\n"
        "    return net, 'xent', (data.x.reshape(-1, 8, 8, 1) / 16.0, data.y)\n"
    )
    prob = pu.user_problem(f"{path}:make", n=32, stateful=True)
    assert prob.state is not None
    params = prob.model.init(jax.random.key(0))
    x, y = prob.data
    logits, _ = prob.model.apply(params, prob.state, x, train=True)
    want = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])
    got = curvature_loss(prob.loss_fn, prob.state)(params, (x, y))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"^problem: .* has model state .* warmup does not carry"):
        pu.user_problem(f"{path}:make", n=32, study="warmup")


DROPOUT_PROBLEM = """
import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        dtype = jnp.result_type(float)
        h = jnp.tanh(nn.Dense(4, param_dtype=dtype)(x))
        h = nn.Dropout(0.5, deterministic=not train)(h)
        return nn.Dense(2, param_dtype=dtype)(h)


def loss(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def make():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(96, 5))
    y = np.stack([np.tanh(x[:, 0] - x[:, 1]), x[:, 2] * x[:, 3]], axis=-1)
    return Net(), loss, (x, y)
"""


def _dropout_reference(p, x, y):
    """The dropout problem's loss with dropout off, written out."""
    h = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None])
    out = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"][None]
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def test_a_dropout_only_linen_module_builds_with_and_without_state(tmp_path):
    # It has no collection besides params, but calls nn.Dropout and declares `train`: a plain
    # module.apply had no `train` and no dropout key, and both builds failed at init
    from hessian_lab import curvature_loss, problem

    (tmp_path / "drop.py").write_text(DROPOUT_PROBLEM)
    stateful = problem.build(f"{tmp_path}/drop.py:make", stateful=True)
    plain = problem.build(f"{tmp_path}/drop.py:make")
    params = plain.model.init(jax.random.key(0))
    x, y = plain.data
    want = _dropout_reference(params, x, y)
    np.testing.assert_allclose(plain.loss_fn(params, (x, y)), want, rtol=1e-12)
    np.testing.assert_allclose(curvature_loss(stateful.loss_fn, stateful.state)(params, (x, y)),
                               want, rtol=1e-12)  # fmt: skip
    # with a key the adapter applies the module's dropout, as flax itself does with that key
    key = jax.random.key(5)
    out, _ = stateful.model.apply(params, stateful.state, x, train=True, key=key)
    ns = {}
    exec(DROPOUT_PROBLEM, ns)  # the problem file's own class
    flax_out = ns["Net"]().apply({"params": params}, x, train=True, rngs={"dropout": key})
    np.testing.assert_allclose(out, flax_out, rtol=1e-12)
    assert not np.allclose(out, stateful.model.apply(params, {}, x, train=True)[0])
    # the studies that carry no state take it too: it has none, and dropout is off there
    from hessian_lab.studies import problems_user as pu

    prob = pu.user_problem(f"{tmp_path}/drop.py:make", study="catapult")
    assert prob.state is None
    np.testing.assert_allclose(prob.loss_fn(params, (x, y)), want, rtol=1e-12)


def _loss_and_make(net: str) -> str:
    """The tail of a problem file: the MSE loss and ``make()`` returning ``net`` on _data()."""
    return (
        "def loss(out, y):\n"
        "    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))\n"
        "def make():\n"
        "    rng = np.random.default_rng(1)\n"
        "    x = rng.normal(size=(96, 5))\n"
        "    y = np.stack([np.tanh(x[:, 0] - x[:, 1]), x[:, 2] * x[:, 3]], axis=-1)\n"
        f"    return {net}, loss, (x, y)\n"
    )


def test_an_equinox_module_with_dropout_builds_with_dropout_off(tmp_path):
    eqx = pytest.importorskip("equinox")
    from hessian_lab import problem

    (tmp_path / "eqx_drop.py").write_text(
        "import equinox as eqx, jax, jax.numpy as jnp, numpy as np\n"
        "class Net(eqx.Module):\n"
        "    a: eqx.nn.Linear\n"
        "    drop: eqx.nn.Dropout\n"
        "    b: eqx.nn.Linear\n"
        "    def __init__(self, key):\n"
        "        k1, k2 = jax.random.split(key)\n"
        "        self.a, self.b = eqx.nn.Linear(5, 4, key=k1), eqx.nn.Linear(4, 2, key=k2)\n"
        "        self.drop = eqx.nn.Dropout(0.5)\n"
        "    def __call__(self, x, *, key=None):\n"
        "        return self.b(self.drop(jnp.tanh(self.a(x)), key=key))\n"
        + _loss_and_make("Net(jax.random.key(0))")
    )
    prob = problem.build(f"{tmp_path}/eqx_drop.py:make")  # Dropout without a key: it raised
    params = prob.model.init(jax.random.key(0))
    x, y = prob.data
    a, b = params.a, params.b
    out = jnp.tanh(x @ a.weight.T + a.bias[None]) @ b.weight.T + b.bias[None]
    want = 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
    np.testing.assert_allclose(prob.loss_fn(params, (x, y)), want, rtol=1e-12)
    assert isinstance(params, eqx.Module)


def test_an_nnx_module_with_dropout_is_taken_by_the_studies_without_state(tmp_path):
    # its only state is the Dropout's random streams, which dropout off never reads
    from hessian_lab.studies import problems_user as pu

    (tmp_path / "nnx_drop.py").write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "from flax import nnx\n"
        "class Net(nnx.Module):\n"
        "    def __init__(self, rngs):\n"
        "        dtype = jnp.result_type(float)\n"
        "        self.a = nnx.Linear(5, 4, param_dtype=dtype, rngs=rngs)\n"
        "        self.drop = nnx.Dropout(0.5, rngs=rngs)\n"
        "        self.b = nnx.Linear(4, 2, param_dtype=dtype, rngs=rngs)\n"
        "    def __call__(self, x):\n"
        "        return self.b(self.drop(jnp.tanh(self.a(x))))\n"
        + _loss_and_make("Net(nnx.Rngs(0))")
    )
    prob = pu.user_problem(f"{tmp_path}/nnx_drop.py:make", study="catapult")
    assert prob.state is None
    params = prob.model.init(jax.random.key(0))
    x, y = prob.data
    a, b = params["a"], params["b"]
    out = jnp.tanh(x @ a["kernel"][...] + a["bias"][...][None]) @ b["kernel"][...]
    out = out + b["bias"][...][None]
    want = 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
    np.testing.assert_allclose(prob.loss_fn(params, (x, y)), want, rtol=1e-12)
    stateful = pu.user_problem(f"{tmp_path}/nnx_drop.py:make", stateful=True)
    assert stateful.state is not None  # the studies that carry state keep its random streams


def test_edge_of_stability_on_a_dropout_only_problem_trains_and_measures_without_dropout(
    tmp_path,
):
    # The studies run full-batch GD as the papers do: a model's dropout is off in training and
    # in the measurement alike (docs/own_network.md), so the run is plain GD on the dropout-off
    # loss, checked against a hand-written loop and a dense Hessian.

    (tmp_path / "drop.py").write_text(DROPOUT_PROBLEM)
    res = _run_eos(f"{tmp_path}/drop.py:make", tmp_path / "eos")

    x, y = map(jnp.asarray, _data())

    class Net(nn.Module):  # the problem's network, to draw the same parameters
        @nn.compact
        def __call__(self, v):
            h = jnp.tanh(nn.Dense(4, param_dtype=jnp.float64)(v))
            return nn.Dense(2, param_dtype=jnp.float64)(h)

    flat, unravel = ravel_pytree(Net().init(member_keys(0)[0], x[:1])["params"])

    def f(t):
        return _dropout_reference(unravel(t), x, y)

    grad, hessian = jax.jit(jax.grad(f)), jax.jit(jax.hessian(f))
    losses, tops = [], []
    for t in range(21):
        if t in (0, 10, 20):
            tops.append(np.linalg.eigvalsh(np.asarray(hessian(flat)))[-1])
        losses.append(float(f(flat)))
        flat = flat - 0.5 * grad(flat)
    np.testing.assert_allclose(res.loss[0], losses, rtol=1e-9)
    np.testing.assert_allclose(res.sharpness[0], tops, rtol=1e-6)
