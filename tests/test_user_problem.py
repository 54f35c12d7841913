"""The user's own problem and data: data specs, entry points, adapters, and every entry point of
the CLI on a tiny problem file and tiny MNIST-format files written here (issue #15, item 1).

Numbers are checked against a dense ``jax.hessian`` + ``numpy.linalg.eigh`` of the same loss,
written independently in this file from the same arrays.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import FLAX_BN_NET
from typer.testing import CliRunner

from hessian_lab import data, problem
from hessian_lab.cli.app import app

PROBLEM = '''
import jax.numpy as jnp
import numpy as np


def make(data, width=3, seed=0):
    """An MLP whose init depends on `seed` only (the test rebuilds it independently)."""
    x = data.x.reshape(len(data.x), -1)
    y = np.eye(10, dtype=x.dtype)[data.y]
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(x.shape[1], width)) / np.sqrt(x.shape[1])
    w2 = rng.normal(size=(width, 10)) / np.sqrt(width)

    def init(key):
        return {"w1": jnp.asarray(w1, x.dtype), "w2": jnp.asarray(w2, x.dtype)}

    def apply(p, inputs):
        return jnp.tanh(inputs @ p["w1"]) @ p["w2"]

    def loss(out, targets):
        return 0.5 * jnp.mean(jnp.sum((out - targets) ** 2, axis=-1))

    return (init, apply), loss, (x, y)


def no_data(width=2):
    return (lambda k: {"w": jnp.ones((3, 2))}, lambda p, x: x @ p["w"]), "mse", (
        np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))


def wrong(data):
    return "not a model", "mse", None


def vector_loss(data):
    x = data.x.reshape(len(data.x), -1)
    return (lambda k: {"w": jnp.ones((x.shape[1], 2))}, lambda p, v: v @ p["w"]), (
        lambda out, y: out.sum(-1)), (x, x[:, :2])
'''


BN_PROBLEM = (
    FLAX_BN_NET
    + """

def make(data, width=2):
    x = data.x.reshape(len(data.x), -1)
    return Net(width, outputs=10, momentum=0.5), "mse", (x, np.eye(10, dtype=x.dtype)[data.y])
"""
)


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A problem file and MNIST-format IDX files (4x4 images): 12 train, 6 test examples."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_problem.py").write_text(PROBLEM)
    (root / "bn_problem.py").write_text(BN_PROBLEM)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 12), ("t10k", 6)):
        images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
        arrays[prefix] = (images, labels)
    np.savez(
        root / "d.npz", x=np.ones((5, 3)), y=np.arange(5), x_test=np.zeros((2, 3)), y_test=[0, 1]
    )
    return root, arrays


def _reference_eigs(images, labels, *, width=3, seed=0, n=None):
    """Dense Hessian eigenvalues of the problem file's loss, rebuilt from the raw arrays."""
    n = len(labels) if n is None else n
    x = images[:n].reshape(n, -1).astype(np.float64) / 255.0
    y = np.eye(10)[labels[:n]]
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(x.shape[1], width)) / np.sqrt(x.shape[1])
    w2 = rng.normal(size=(width, 10)) / np.sqrt(width)
    theta = np.concatenate([w1.ravel(), w2.ravel()])

    def loss(t):
        a, b = t[: w1.size].reshape(w1.shape), t[w1.size :].reshape(w2.shape)
        return 0.5 * jnp.mean(jnp.sum((jnp.tanh(x @ a) @ b - y) ** 2, axis=-1))

    with jax.enable_x64(True):
        h = np.asarray(jax.hessian(loss)(jnp.asarray(theta)))
    return np.linalg.eigvalsh(h)[::-1]


# --- data specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("digits", "digits?split=train"),
        ("mnist:some/dir", "mnist:some/dir?split=train"),
        ("MNIST:d?split=test", "mnist:d?split=test"),
        ("cifar10:c ?split=train", "cifar10:c?split=train"),
        ("npz:a.npz", "npz:a.npz?split=train"),
    ],
)
def test_data_specs_parse_to_a_canonical_form_with_the_split(text, canonical):
    spec = data.parse_data(text)
    assert str(spec) == canonical and data.parse_data(str(spec)) == spec


@pytest.mark.parametrize(
    "bad", ["", "mnist", "imagenet:x", "digits:x", "digits?split=test", "mnist:d?split=val",
            "mnist:d?n=3", "npz:"],
)  # fmt: skip
def test_bad_data_specs_name_the_option(bad):
    with pytest.raises(ValueError, match=r"^--data: "):
        data.parse_data(bad, name="--data")


def test_load_data_defaults_to_train_and_reads_test_only_when_asked(files):
    root, arrays = files
    train = data.load_data(f"mnist:{root}")
    test = data.load_data(f"mnist:{root}?split=test", n=4)
    assert train.x.shape == (12, 4, 4, 1) and test.x.shape == (4, 4, 4, 1)
    np.testing.assert_allclose(train.x[..., 0], arrays["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(test.y, arrays["t10k"][1][:4])
    assert data.mnist(root).x.shape[0] == 12  # the loader's default split is train too
    npz = (
        data.load_data(f"npz:{root / 'd.npz'}"),
        data.load_data(f"npz:{root / 'd.npz'}?split=test"),
    )
    assert npz[0].x.shape == (5, 3) and npz[0].y.dtype == np.int64 and npz[1].y.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"^data: .*no arrays 'x_test'"):
        np.savez(root / "train_only.npz", x=np.ones((2, 1)), y=np.ones(2))
        data.load_data(f"npz:{root / 'train_only.npz'}?split=test")
    with pytest.raises(ValueError, match=r"^data: cannot load .*not found"):
        data.load_data(f"mnist:{root / 'nowhere'}")


# --- entry points -------------------------------------------------------------------------------


def test_entry_point_from_a_file_and_from_a_module(files, monkeypatch):
    root, _ = files
    ds = data.load_data(f"mnist:{root}")
    p = problem.build(f"{root}/my_problem.py:make", data=ds, args=["width=2"])
    assert p.state is None and p.data[0].shape == (12, 16) and p.data[1].shape == (12, 10)
    assert jax.tree.map(jnp.shape, p.model.init(jax.random.key(0))) == {
        "w1": (16, 2),
        "w2": (2, 10),
    }
    monkeypatch.syspath_prepend(str(root))
    same = problem.build("my_problem:make", data=ds, args={"width": 2})
    params = p.model.init(jax.random.key(0))
    assert float(same.loss_fn(params, same.data)) == float(p.loss_fn(params, p.data))
    sys.modules.pop("my_problem", None)


@pytest.mark.parametrize(
    ("entry", "args", "match"),
    [
        ("nowhere.py:make", (), r"^problem: no file nowhere.py"),
        ("{root}/my_problem.py:missing", (), r"^problem: .* has no function 'missing'"),
        ("no_such_module_xyz:make", (), r"^problem: no module 'no_such_module_xyz'"),
        ("{root}/my_problem.py", (), r"^problem: must be an entry point"),
        ("{root}/my_problem.py:make", ("depth=2",), r"^problem_args: .* takes no argument 'depth'"),
        ("{root}/my_problem.py:make", ("width",), r"^problem_args: expected NAME=VALUE"),
        ("{root}/my_problem.py:make", ("width=two",), r"^problem: .*make\(width='two'\) raised"),
        ("{root}/my_problem.py:wrong", (), r"^problem: the model must be an init/apply pair"),
        (
            "{root}/my_problem.py:vector_loss",
            (),
            r"^problem: the loss of .* must be a float scalar",
        ),
    ],
)
def test_bad_entry_points_fail_in_one_line_naming_the_option(files, entry, args, match):
    root, _ = files
    ds = data.load_data(f"mnist:{root}")
    with pytest.raises(ValueError, match=match):
        problem.build(entry.format(root=root), data=ds, args=args)


def test_a_function_without_data_brings_its_own_and_refuses_an_unused_spec(files):
    from hessian_lab.studies import problems

    root, _ = files
    p = problems.user_problem(f"{root}/my_problem.py:no_data")
    assert p.data[0].shape == (4, 3)
    with pytest.raises(ValueError, match=r"^data: .*takes no `data` argument"):
        problems.user_problem(f"{root}/my_problem.py:no_data", data=f"mnist:{root}")


def _framework_models():
    """(name, build the module, its own mean MSE on (x, y)) per installed framework."""
    out = []
    x = np.linspace(-1, 1, 15, dtype=np.float32).reshape(5, 3)
    y = np.cos(np.arange(10, dtype=np.float32)).reshape(5, 2)
    mse = lambda f: 0.5 * jnp.mean(jnp.sum((f - y) ** 2, -1))  # noqa: E731
    try:
        import flax.linen as nn
        from flax import nnx

        class Linen(nn.Module):
            @nn.compact
            def __call__(self, v):
                return nn.Dense(2)(jnp.tanh(nn.Dense(4)(v)))

        class Nnx(nnx.Module):
            def __init__(self, rngs):
                self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

            def __call__(self, v):
                return self.b(jnp.tanh(self.a(v)))

        m = Linen()
        out.append(("linen", m, lambda p: mse(m.apply({"params": p}, x))))
        n = Nnx(nnx.Rngs(0))
        gd, _ = nnx.split(n)
        out.append(("nnx", n, lambda p: mse(nnx.merge(gd, p)(x))))
    except ImportError:
        pass
    try:
        import equinox as eqx

        e = eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=jax.random.key(1))
        _, static = eqx.partition(e, eqx.is_inexact_array)
        out.append(("equinox", e, lambda p: mse(jax.vmap(eqx.combine(p, static))(x))))
    except ImportError:
        pass
    return x, y, out


def test_framework_models_are_the_function_their_framework_computes():
    x, y, models = _framework_models()
    if not models:
        pytest.skip("neither flax nor equinox is installed")
    for name, module, own_loss in models:
        p = problem.build(lambda module=module: (module, "mse", (x, y)), label=name)
        params = p.model.init(jax.random.key(3))
        moved = jax.tree.map(
            lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), params
        )
        for theta in (params, moved):  # the parameters reach the framework's forward pass
            np.testing.assert_allclose(p.loss_fn(theta, p.data), own_loss(theta), rtol=1e-6)
            ours, theirs = jax.grad(p.loss_fn)(theta, p.data), jax.grad(own_loss)(theta)
            for u, v in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
                np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7, err_msg=name)
        assert float(own_loss(moved)) != float(own_loss(params))


def test_model_state_is_refused_in_words():
    nn = pytest.importorskip("flax.linen")

    class WithBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, v):
            return nn.BatchNorm(use_running_average=True)(nn.Dense(2)(v))

    xy = (np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"^problem: the model holds state \(batch_stats\)"):
        problem.build(lambda: (WithBatchNorm(), "mse", xy))


# --- the command line ---------------------------------------------------------------------------


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_sharpness_on_the_users_problem_and_mnist_files(files):
    root, arrays = files
    r = _cli("sharpness", "--problem", f"{root}/my_problem.py:make", "--data", f"mnist:{root}",
             "--arg", "width=2", "--n", 10, "-k", 2, "--num-iters", 24, "--trace-matvecs", 4,
             "--no-density", "--x64", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout.strip().splitlines()[-1])["eigenvalues"]
    ref = _reference_eigs(*arrays["train"], width=2, n=10)
    np.testing.assert_allclose(got, ref[:2], rtol=1e-6)


def test_a_run_on_the_test_split_says_so(files):
    root, _ = files
    r = _cli("sharpness", "--problem", f"{root}/my_problem.py:make", "--data",
             f"mnist:{root}?split=test")  # fmt: skip
    assert r.exit_code == 2 and "error: --n: must be an integer in [1, 6]" in r.stderr  # 6 examples
    assert f"note: --data mnist:{root}?split=test uses the TEST split" in r.stderr


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--problem", "nowhere.py:make"], "--problem: no file nowhere.py"),
        (["--problem", "{root}/my_problem.py:make", "--data", "mnist"], "--data: mnist needs"),
        (["--problem", "{root}/my_problem.py:make", "--data", "mnist:{root}/no"], "--data: cannot"),
        (["--problem", "{root}/my_problem.py:make", "--arg", "depth=1"], "--arg: .*no argument"),
        (["--problem", "{root}/my_problem.py:make", "--width", "5"], "--width: describes"),
        (["--problem", "{root}/my_problem.py:wrong"], "--problem: the model must be"),
    ],
)
def test_sharpness_bad_input_is_one_line_and_writes_nothing(files, tmp_path, args, match):
    root, _ = files
    out = tmp_path / "run"
    r = _cli("sharpness", *[a.format(root=root) for a in args], "--out", out, "-q")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert __import__("re").search("error: " + match, r.stderr), r.stderr
    assert not out.exists()


def test_edge_of_stability_on_the_users_problem(files, tmp_path):
    from hessian_lab.studies import edge_of_stability as eos

    root, arrays = files
    out = tmp_path / "eos"
    r = _cli("study", "run", "edge_of_stability", "--preset", "tiny", "--out", out, "--no-report",
             "-q", "--set", f"problem={root}/my_problem.py:make", "--set", f"data=mnist:{root}",
             "--set", "problem_args=width=2", "--set", "n_train=10", "--set", "lrs=0.5",
             "--set", "num_steps=20", "--set", "sharpness_every=10", "--set", "lanczos_iters=30",
             "--set", "flow_time=0", "--set", "short_window=5", "--set", "long_window=10")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = eos.load(out)
    assert res.config.data == f"mnist:{root}?split=train"  # the split is recorded
    np.testing.assert_allclose(
        res.sharpness0[0], _reference_eigs(*arrays["train"], width=2, n=10)[0], rtol=1e-3
    )
    bad = _cli("study", "run", "edge_of_stability", "--out", tmp_path / "bad", "--set",
               f"problem={root}/my_problem.py:make", "--set", "problem_args=depth=3")  # fmt: skip
    assert bad.exit_code == 2 and "problem_args: " in bad.stderr and "depth" in bad.stderr
    assert not (tmp_path / "bad").exists()


# --- the other studies that train a network -----------------------------------------------------


def _study(name, out, root, *sets):
    """``study run NAME --preset tiny`` on the problem file (width 2) and the MNIST-format files."""
    return _cli("study", "run", name, "--preset", "tiny", "--out", out, "--no-report", "-q",
                "--set", f"problem={root}/my_problem.py:make", "--set", f"data=mnist:{root}",
                "--set", "problem_args=width=2", *[a for s in sets for a in ("--set", s)])  # fmt: skip


def test_warmup_on_the_users_problem(files, tmp_path):
    from hessian_lab.studies import warmup

    root, arrays = files
    r = _study("warmup", tmp_path / "w", root, "n=10", "lanczos_iters=40", "traj_steps=8",
               "traj_warmup_steps=4", "post_steps=4", "num_c=2", "search_steps=1",
               "init_search_steps=1", "adam_warmup_steps=2", "adam_steps=4", "chunk_size=10")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = warmup.load(tmp_path / "w")
    assert warmup.names(res.config) == ["my_problem.py:make"] and res.lam0.shape == (1, 1)
    ref = _reference_eigs(*arrays["train"], width=2, n=10)[0]
    np.testing.assert_allclose(res.lam0[0, 0], ref, rtol=1e-6)
    assert any(s.startswith("my_problem.py:make") for s in warmup.verdict(res))


def test_critical_sharpness_on_the_users_problem(files, tmp_path):
    from hessian_lab.studies import critical_sharpness as cs

    root, arrays = files
    r = _study("critical_sharpness", tmp_path / "c", root, "n_train=10", "num_steps=20",
               "lanczos_iters=40", "alignment_k=0")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = cs.load(tmp_path / "c")
    ref = _reference_eigs(*arrays["train"], width=2, n=10)[0]
    np.testing.assert_allclose(res.sharpness[0, 0], ref, rtol=1e-6)
    assert np.isfinite(res.critical_sharpness[0, 0]) and res.critical_sharpness[0, 0] > 0


def test_catapult_on_the_users_problem_sweeps_its_width(files, tmp_path):
    from hessian_lab.studies import catapult

    root, arrays = files
    small = ("mlp_n=10", "mlp_num_c=3", "mlp_steps=10", "uv_num_c=2", "uv_steps=10",
             "uv_widths=32", "lambda0_iters=40")  # fmt: skip
    bad = _cli("study", "run", "catapult", "--out", tmp_path / "bad", "--set",
               f"problem={root}/my_problem.py:make", "--set", f"data=mnist:{root}", "--set",
               "mlp_n=10")  # fmt: skip
    assert bad.exit_code == 2 and "mlp_seeds: " in bad.stderr and "init key" in bad.stderr
    sweep = catapult.TINY.__class__(
        problem="p.py:make", problem_widths=(2, 3), problem_args=("depth=1",)
    )  # two widths: two points (each is one compiled population, so the run below has one)
    assert [p for p in catapult.points(sweep) if p["family"] == "mlp"] == [
        {"family": "mlp", "width": 2},
        {"family": "mlp", "width": 3},
    ]
    r = _cli("study", "run", "catapult", "--preset", "tiny", "--out", tmp_path / "k",
             "--no-report", "-q", "--set", f"problem={root}/my_problem.py:make", "--set",
             f"data=mnist:{root}", "--set", "problem_widths=2", "--set", "mlp_seeds=0",
             *[a for s in small for a in ("--set", s)])  # fmt: skip
    assert r.exit_code == 0, r.output
    res = catapult.load(tmp_path / "k")
    ref = _reference_eigs(*arrays["train"], width=2, n=10)[0]  # the function's default is 3
    assert res.mlp_widths.tolist() == [2]
    np.testing.assert_allclose(res.mlp_lambda0[0, 0], ref, rtol=1e-6)
    np.testing.assert_allclose(res.mlp_eta[0, :, 0], res.mlp_c / ref, rtol=1e-6)
    assert "my_problem.py:make width=2" in catapult.summary(res)["c_loss"]
    # a problem without a width argument is recorded as width 0: the figures say "as given"
    figs = catapult.figures(dataclasses.replace(res, mlp_widths=np.array([0])))
    texts = [
        t
        for fig in figs.values()
        for ax in fig.axes
        for t in [ax.get_title()] + [x.get_text() for x in getattr(ax.get_legend(), "texts", [])]
    ]
    assert any("the model as given" in t for t in texts)
    assert not any("width 0" in t for t in texts)
    assert any("width 32" in t for t in texts)  # the linear net's widths keep their label
    clash = _cli("study", "run", "catapult", "--out", tmp_path / "clash", "--set",
                 f"problem={root}/my_problem.py:make", "--set", "problem_widths=2", "--set",
                 "problem_args=width=3")  # fmt: skip
    assert (
        clash.exit_code == 2
        and "problem_widths: must be empty when problem_args sets width" in clash.stderr
    )


def test_stochastic_eos_on_the_users_problem(files, tmp_path):
    from hessian_lab.studies import stochastic_eos as se

    root, arrays = files
    r = _study("stochastic_eos", tmp_path / "s", root, "mlp_n=10", "mlp_batch_sizes=5",
               "every=5", "mlp_steps=10", "num_iters=40", "lin_n=8", "lin_dim=2",
               "lin_steps=20", "lin_seeds=1")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = se.load(tmp_path / "s")
    ref = _reference_eigs(*arrays["train"], width=2, n=10)[0]
    np.testing.assert_allclose(res.mlp_sharpness[0, 0, 0], ref, rtol=1e-6)
    assert np.all(np.isnan(se.mlp_curves(res)[1]))  # no noise kernel: it is the digits MLP's
    none = _study("stochastic_eos", tmp_path / "none", root)  # TINY has no MLP part
    assert none.exit_code == 2 and "error: mlp_batch_sizes: " in none.stderr, none.stderr
    assert not (tmp_path / "none").exists()


def test_sharpness_of_a_batchnorm_problem_in_train_and_eval_mode(files):
    """The CLI's top eigenvalues equal a dense Hessian of flax's own train/eval-mode loss."""
    pytest.importorskip("flax")
    root, labels = files[0], files[1]["train"][1]
    entry, n = f"{root}/bn_problem.py:make", 10
    ds = data.load_data(f"mnist:{root}", n=n)  # float32 in [0, 1], as the CLI reads them
    x, y = np.asarray(ds.x, np.float64).reshape(n, -1), np.eye(10)[labels[:n]]
    with jax.enable_x64(True):
        p = problem.build(entry, data=ds, stateful=True)
        params = p.model.init(jax.random.split(jax.random.key(0), 4)[0])  # the CLI's init
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        module = problem.load_entry(entry)(data=data.Dataset(x, labels[:n]))[0]
        stats = jax.tree.map(jnp.asarray, p.state)  # the initial running statistics

        def loss(theta, train):
            variables = {"params": unravel(theta), **stats}
            if train:
                out = module.apply(variables, x, train=True, mutable=["batch_stats"])[0]
            else:
                out = module.apply(variables, x, train=False)
            return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

        hess = jax.jit(jax.hessian(loss), static_argnums=1)
        ref = {
            mode: np.linalg.eigvalsh(np.asarray(hess(flat, mode == "train")))[::-1]
            for mode in ("train", "eval")
        }
    assert abs(ref["train"][0] - ref["eval"][0]) > 1e-3 * ref["train"][0]  # the modes differ
    for mode in ("train", "eval"):
        r = _cli("sharpness", "--problem", entry, "--data", f"mnist:{root}", "--n", n,
                 "--chunk-size", 4, "--mode", mode, "-k", 2, "--num-iters", 40,
                 "--trace-matvecs", 4, "--no-density", "--x64", "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout.strip().splitlines()[-1])["eigenvalues"]
        np.testing.assert_allclose(got, ref[mode][:2], rtol=1e-8, err_msg=mode)
    bad = _cli("sharpness", "--problem", f"{root}/my_problem.py:make", "--mode", "eval")
    assert bad.exit_code == 2 and "error: --mode: must be train" in bad.stderr, bad.stderr
