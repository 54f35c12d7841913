"""``hessian-lab phase-diagram early --problem FILE.py:make --data mnist:DIR`` end to end (issue
#15): a tiny problem file and MNIST-format IDX files written here; the sharpness at every cell's
initialisation is checked against a dense ``jax.hessian`` + ``eigh`` of the same loss, written
independently in this file from the same arrays. Bad input is one line naming the option, before
any work."""

from __future__ import annotations

import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from typer.testing import CliRunner

from hessian_lab import population
from hessian_lab.cli.app import app
from hessian_lab.studies import early_phase_diagram as epd

PROBLEM = '''
import jax
import jax.numpy as jnp
import numpy as np


def make(data, width=3, scale=1.0):
    """A one-hidden-layer tanh MLP whose init follows the key (so seeds differ)."""
    x = data.x.reshape(len(data.x), -1)
    y = np.eye(10, dtype=x.dtype)[data.y]

    def init(key):
        k1, k2 = jax.random.split(key)
        return {"w1": scale * jax.random.normal(k1, (x.shape[1], width)) / np.sqrt(x.shape[1]),
                "w2": jax.random.normal(k2, (width, 10)) / np.sqrt(width)}

    def apply(p, inputs):
        return jnp.tanh(inputs @ p["w1"]) @ p["w2"]

    return (init, apply), "mse", (x, y)


def wrong(data, width=2):
    return "not a model", "mse", None
'''


def _idx(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The problem file and MNIST-format IDX files (4x4 images): 12 train, 6 test examples."""
    root = tmp_path_factory.mktemp("pd_user")
    (root / "prob.py").write_text(PROBLEM)
    rng = np.random.default_rng(1)
    train = None
    for prefix, n in (("train", 12), ("t10k", 6)):
        images = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
        train = train or (images, labels)
    return root, train


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


SMALL = ["--set", "n=12", "--set", "seeds=0", "--set", "num_c=4", "--set", "log2_c_min=0.5",
         "--set", "log2_c_max=3.5", "--set", "num_steps=4", "--set", "lanczos_iters=4",
         "--set", "lambda0_iters=16", "--set", "barrier_points=4"]  # fmt: skip


def _dense_lambda0(images, labels, params):
    """Top eigenvalue of the dense Hessian of 0.5 * mean_i ||f(x_i) - y_i||^2 at ``params``."""
    x = jnp.asarray(images.reshape(len(images), -1) / 255.0, jnp.float32)
    y = jax.nn.one_hot(labels, 10)
    flat, unravel = ravel_pytree(params)

    def loss(f):
        p = unravel(f)
        out = jnp.tanh(x @ p["w1"]) @ p["w2"]
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    return np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))[-1]


def test_phase_diagram_of_the_users_network_on_mnist_files(files, tmp_path):
    root, (images, labels) = files
    out = tmp_path / "pd"
    r = _cli("phase-diagram", "early", "--problem", f"{root}/prob.py:make", "--data",
             f"mnist:{root}", "--x", "width=2,6", "--arg", "scale=0.5", *SMALL, "--out", out,
             "-q", "--no-report")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = epd.load(out)
    assert res.config.data == f"mnist:{root}?split=train"  # the split is recorded
    assert res.config.x_arg == "width" and res.config.problem_args == ("scale=0.5",)
    np.testing.assert_array_equal(res.widths, [2, 6])
    s = epd.summary(res)
    assert set(s["c_loss"]) == {"width=2", "width=6"}
    for j, width in enumerate((2, 6)):  # each cell is the function at its width, seed 0
        prob = epd.problem(res.config, None, width)
        params = prob.model.init(population.member_keys(0)[0])
        assert params["w1"].shape == (16, width)
        ref = _dense_lambda0(images, labels, params)
        np.testing.assert_allclose(res.lambda0[0, j, 0], ref, rtol=1e-4)
    np.testing.assert_allclose(res.eta, res.c[None, None, :, None] / res.lambda0[:, :, None])
    assert any(v.startswith("c_loss over width=2 ... width=6") for v in epd.verdict(res))


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--problem", "{root}/absent.py:make", "--x", "width=2"], "error: problem: no file"),
        (["--problem", "{root}/prob.py:nothing", "--x", "width=2"], "error: problem: "),
        (["--problem", "{root}/prob.py:wrong", "--x", "width=2"], "error: problem: "),
        (["--problem", "{root}/prob.py:make", "--data", "mnist", "--x", "width=2"],
         "error: --data "),
        (["--problem", "{root}/prob.py:make", "--data", "npz:{root}/none.npz", "--x", "width=2"],
         "error: data: "),
        (["--problem", "{root}/prob.py:make", "--x", "2,4"], "error: --x: name an argument"),
        (["--problem", "{root}/prob.py:make", "--x", "depth=2,4"], "error: problem_args: "),
        (["--problem", "{root}/prob.py:make", "--arg", "width=3", "--x", "width=2"],
         "error: --arg problem_args=width=3, --x x_arg=width: x_arg: "),  # swept and fixed
        (["--problem", "{root}/prob.py:make"], "error: x_values: "),  # no --x
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_the_option_before_any_work(files, tmp_path, args, start):
    root, _ = files
    out = tmp_path / "bad"
    r = _cli("phase-diagram", "early", *[a.format(root=root) for a in args], "--out", out, "-q")
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(start) and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
def test_builtin_nets_on_a_data_spec(files, arch):
    # the built-in MLP/CNN on MNIST-format files: images standardised per pixel over the n kept
    # examples (NHWC for the CNN), one-hot targets; nothing is trained here
    root, (images, labels) = files
    cfg = epd.Config(arch=arch, data=f"mnist:{root}", n=10, depths=(2,), widths=(3,))
    epd.check_inputs(cfg)
    x, y = epd.problem(cfg, 2, 3).data
    raw = images[:10].reshape(10, -1) / 255.0
    sd = raw.std(0)
    ref = (raw - raw.mean(0)) / np.where(sd > 0, sd, 1.0)
    assert x.shape == ((10, 4, 4, 1) if arch == "cnn" else (10, 16))
    np.testing.assert_allclose(np.asarray(x).reshape(10, -1), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y), np.eye(10)[labels[:10]])


MNIST = "/work/shared/data/mnist"
_T10K = f"{MNIST}/t10k-images-idx3-ubyte.gz"


@pytest.mark.skipif(not Path(_T10K).is_file(), reason="real MNIST files absent")
def test_builtin_cnn_on_the_real_mnist_files():
    cfg = epd.Config(arch="cnn", data=f"mnist:{MNIST}?split=test", n=32, depths=(2,), widths=(3,))
    epd.check_inputs(cfg)
    x, y = epd.problem(cfg, 2, 3).data
    assert x.shape == (32, 28, 28, 1) and y.shape == (32, 10)
    np.testing.assert_allclose(np.asarray(y).sum(1), 1.0)
