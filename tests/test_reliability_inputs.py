"""Bad inputs to losses, loaders, checkpoints and the trainer: refused by name, or truly diverged.

Every case is a family member of issue #18's input part. A clean outcome is either a one-line
``ValueError`` (a ``FileNotFoundError`` for a missing file) whose message starts with the
argument's name, or, under ``jit`` where nothing can be raised, NaN; a run is "diverged" only
when its inputs were finite and training blew up.
"""

import gzip
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessian_lab import data, losses, optim, population, trainer
from hessian_lab.checkpoint import load_checkpoint, save_checkpoint

LOGITS = jnp.asarray(np.arange(12.0).reshape(4, 3) / 7)
LABELS = jnp.asarray([0, 1, 2, 1])
ONE_HOT = jax.nn.one_hot(LABELS, 3)


def _refused(call, name, error=ValueError, contains=""):
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(name), f"message does not start with {name!r}: {msg}"
    assert "\n" not in msg and contains in msg, msg


# --- losses ----------------------------------------------------------------------------------

xent, acc, mse = losses.cross_entropy, losses.accuracy, losses.mse
LOSS_CASES = {
    "xent_label_minus_1": (lambda: xent(LOGITS, LABELS.at[0].set(-1)), "labels"),
    "xent_label_C": (lambda: xent(LOGITS, LABELS.at[1].set(3)), "labels"),
    "xent_label_12": (lambda: xent(LOGITS, LABELS.at[2].set(12)), "labels"),
    "xent_float_labels": (lambda: xent(LOGITS, LABELS.astype(float)), "labels"),
    "xent_labels_n1": (lambda: xent(LOGITS, LABELS[:, None]), "labels"),
    "xent_labels_too_many": (lambda: xent(LOGITS, jnp.zeros(5, int)), "labels"),
    "xent_not_one_hot": (lambda: xent(LOGITS, 2 * ONE_HOT), "labels"),
    "xent_negative_probs": (lambda: xent(LOGITS, ONE_HOT.at[0].set([-1.0, 1, 1])), "labels"),
    "xent_nan_targets": (lambda: xent(LOGITS, ONE_HOT.at[0, 0].set(jnp.nan)), "labels"),
    "xent_one_class": (lambda: xent(LOGITS[:, :1], jnp.zeros(4, int)), "logits"),
    "acc_label_minus_1": (lambda: acc(LOGITS, LABELS.at[0].set(-1)), "labels"),
    "acc_label_C": (lambda: acc(LOGITS, LABELS.at[0].set(3)), "labels"),
    "acc_zero_rows": (lambda: acc(LOGITS, jnp.zeros((4, 3))), "labels"),
    "acc_float_labels": (lambda: acc(LOGITS, LABELS.astype(float)), "labels"),
    "mse_label_minus_1": (lambda: mse(LOGITS, LABELS.at[0].set(-1)), "targets"),
    "mse_label_C": (lambda: mse(LOGITS, LABELS.at[0].set(3)), "targets"),
    "mse_shape": (lambda: mse(LOGITS, jnp.zeros((4, 2))), "targets"),
    "mse_flat_float": (lambda: mse(LOGITS[:, :1], jnp.zeros(4)), "targets"),
    "mse_nan_targets": (lambda: mse(LOGITS, ONE_HOT.at[0, 0].set(jnp.inf)), "targets"),
    "loss_fn_label": (
        lambda: losses.make_loss_fn(lambda p, x: x @ p, "xent")(jnp.eye(3), (LOGITS, -LABELS)),
        "labels",
    ),
}


@pytest.mark.parametrize("case", LOSS_CASES)
def test_losses_refuse_bad_targets(case):
    _refused(*LOSS_CASES[case])


JIT_CASES = {
    "xent_minus_1": lambda: jax.jit(xent)(LOGITS, LABELS.at[0].set(-1)),
    "xent_12": lambda: jax.jit(xent)(LOGITS, LABELS.at[0].set(12)),
    "xent_not_one_hot": lambda: jax.jit(xent)(LOGITS, 2 * ONE_HOT),
    "acc_minus_1": lambda: jax.jit(acc)(LOGITS, LABELS.at[3].set(-1)),
    "acc_zero_rows": lambda: jax.jit(acc)(LOGITS, ONE_HOT.at[0].set(0.0)),
    "mse_label_5": lambda: jax.jit(mse)(LOGITS, LABELS.at[0].set(5)),
}


@pytest.mark.parametrize("case", JIT_CASES)
def test_losses_under_jit_give_nan_not_a_wrong_number(case):
    assert not np.isfinite(JIT_CASES[case]())


def test_a_bad_label_adds_nothing_to_the_gradient():
    # The loss is NaN, but the gradient is not that of a wrapped label: the bad example's row is
    # zero and the others are (softmax - onehot) / n, the closed form.
    g = jax.jit(jax.grad(xent))(LOGITS, LABELS.at[0].set(-1))
    ref = (jax.nn.softmax(LOGITS) - ONE_HOT) / 4
    np.testing.assert_allclose(g[0], 0.0)
    np.testing.assert_allclose(g[1:], ref[1:], rtol=1e-12)


def test_valid_targets_still_give_the_closed_forms():
    c = np.log(3.0)
    np.testing.assert_allclose(xent(jnp.zeros((4, 3)), LABELS), c, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(xent)(jnp.zeros((4, 3)), jnp.full((4, 3), 1 / 3)), c)
    assert float(acc(ONE_HOT, LABELS)) == 1.0 == float(jax.jit(acc)(ONE_HOT, ONE_HOT))
    np.testing.assert_allclose(jax.jit(mse)(ONE_HOT, LABELS), 0.0)
    smooth = (0.9 * ONE_HOT + 0.1 / 3).astype(jnp.bfloat16)  # sums to 1 only to bf16 rounding
    assert np.isfinite(xent(LOGITS, smooth)) and np.isfinite(xent(LOGITS, smooth.astype(float)))
    assert len(data.preprocess(DS, first_n=np.int64(2)).x) == 2


# --- loaders ---------------------------------------------------------------------------------


def _idx(a, code=0x08):
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype({0x08: ">u1", 0x0D: ">f4"}[code]).tobytes()


def _mnist_pair(tmp, images, labels, code=0x08, label_code=0x08):
    (tmp / "i").write_bytes(_idx(images, code))
    (tmp / "l").write_bytes(_idx(labels, label_code))
    return (tmp / "i", tmp / "l")


IMG, LBL = np.zeros((3, 2, 2), np.uint8), np.array([0, 9, 3], np.uint8)
F_IMG = IMG.astype(np.float32)


def _cifar(tmp, labels, n=2):
    d = tmp / "cifar-10-batches-py"
    d.mkdir(exist_ok=True)
    batch = {b"data": np.zeros((n, 3072), np.uint8), b"labels": list(labels)}
    (d / "test_batch").write_bytes(pickle.dumps(batch))
    return tmp


def _w(tmp, payload):
    (tmp / "f").write_bytes(payload)
    return tmp / "f"


DS, pre = data.Dataset(np.ones((4, 2), np.float32), np.array([0, 1, 1, 0])), data.preprocess
LOADER_CASES = {
    "idx_truncated": (lambda t: data.read_idx(_w(t, _idx(IMG)[:-3])), "path"),
    "idx_garbage": (lambda t: data.read_idx(_w(t, b"garbage file")), "path"),
    "idx_empty_file": (lambda t: data.read_idx(_w(t, b"")), "path"),
    "idx_header_only": (lambda t: data.read_idx(_w(t, _idx(IMG)[:7])), "path"),
    "idx_huge_dims": (
        lambda t: data.read_idx(_w(t, bytes([0, 0, 8, 3]) + struct.pack(">3I", *[2**31] * 3))),
        "path",
    ),
    "idx_bad_gzip": (lambda t: data.read_idx(_w(t, gzip.compress(_idx(IMG))[:20])), "path"),
    "mnist_nan_pixels": (
        lambda t: data.mnist(_mnist_pair(t, F_IMG.copy() * np.nan, LBL, 0x0D)),
        "path",
    ),
    "mnist_1e6_pixels": (lambda t: data.mnist(_mnist_pair(t, F_IMG + 1e6, LBL, 0x0D)), "path"),
    "mnist_negative_pixels": (lambda t: data.mnist(_mnist_pair(t, F_IMG - 1, LBL, 0x0D)), "path"),
    "mnist_label_11": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL + 2)), "path"),
    "mnist_float_labels": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL, 0x08, 0x0D)), "path"),
    "mnist_empty": (lambda t: data.mnist(_mnist_pair(t, IMG[:0], LBL[:0])), "path"),
    "mnist_lengths": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL[:2])), "path"),
    "mnist_three_paths": (lambda t: data.mnist((t, t, t)), "path"),
    "mnist_split": (lambda t: data.mnist(t, split="val"), "split"),
    "mnist_n0": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL), n=0), "n"),
    "mnist_n_bool": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL), n=True), "n"),
    "mnist_int_dtype": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL), dtype=np.int32), "dtype"),
    "mnist_bad_dtype": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL), dtype="pixels"), "dtype"),
    "mnist_missing": (lambda t: data.mnist(t / "nowhere"), "path", FileNotFoundError),
    "mnist_flatten_str": (lambda t: data.mnist(_mnist_pair(t, IMG, LBL), flatten="no"), "flatten"),
    "digits_standardize": (lambda t: data.digits(n=5, standardize="global"), "standardize"),
    "cifar_label_10": (lambda t: data.cifar10(_cifar(t, [0, 10]), split="test"), "path"),
    "cifar_label_minus_1": (lambda t: data.cifar10(_cifar(t, [-1, 0]), split="test"), "path"),
    "cifar_empty": (lambda t: data.cifar10(_cifar(t, [], n=0), split="test"), "path"),
    "cifar_n0": (lambda t: data.cifar10(_cifar(t, [0, 1]), split="test", n=0), "n"),
    "dataset_lengths": (lambda t: data.Dataset(np.ones((3, 2)), np.ones(4)), "x"),
    "dataset_empty": (lambda t: data.Dataset(np.ones((0, 2)), np.ones(0)), "x"),
    "preprocess_nan": (lambda t: data.preprocess(DS._replace(x=DS.x * np.nan)), "ds"),
    "preprocess_inf": (lambda t: data.preprocess(DS._replace(x=DS.x * np.inf)), "ds"),
    "preprocess_nan_y": (lambda t: data.preprocess(DS._replace(y=DS.y * np.nan)), "ds"),
    "preprocess_first_n": (lambda t: data.preprocess(DS, first_n=0), "first_n"),
    "preprocess_scale_nan": (lambda t: data.preprocess(DS, scale=float("nan")), "scale"),
    "preprocess_scale_str": (lambda t: data.preprocess(DS, scale="2"), "scale"),
    "preprocess_int_dtype": (lambda t: data.preprocess(DS, dtype=np.int8), "dtype"),
    "preprocess_num_classes": (lambda t: pre(DS, one_hot=True, num_classes=1), "num_classes"),
    "preprocess_one_hot_int": (lambda t: pre(DS, one_hot=1), "one_hot"),
    "preprocess_negative_label": (lambda t: pre(DS._replace(y=-DS.y), one_hot=True), "ds"),
    "preprocess_not_one_hot": (lambda t: pre(DS._replace(y=DS.x), one_hot=False), "one_hot"),
    "random_subset_n0": (lambda t: data.random_subset(DS, 0), "n"),
    "random_subset_float": (lambda t: data.random_subset(DS, 1.5), "n"),
    "random_subset_too_many": (lambda t: data.random_subset(DS, 5), "n"),
    "random_subset_seed": (lambda t: data.random_subset(DS, 2, seed=-1), "seed"),
    "subset_indices_empty": (lambda t: data.subset_indices(0, 1), "n"),
    "to_one_hot_float": (lambda t: data.to_one_hot(np.array([0.5, 1.0]), 2), "labels"),
    "to_one_hot_range": (lambda t: data.to_one_hot(np.array([0, 2]), 2), "labels"),
    "to_one_hot_classes": (lambda t: data.to_one_hot(np.array([0]), 0), "num_classes"),
    "teacher_int_dtype": (lambda t: data.teacher(0, 4, 2, dtype=np.int32), "dtype"),
    "teacher_noise_str": (lambda t: data.teacher(0, 4, 2, noise="x"), "noise"),
    "teacher_n0": (lambda t: data.teacher(0, 0, 2), "n"),
    "mixture_std": (lambda t: data.gaussian_mixture(0, 4, 2, std=-1.0), "std"),
    "mixture_key": (lambda t: data.gaussian_mixture("seed", 4, 2), "key"),
}


@pytest.mark.parametrize("case", LOADER_CASES)
def test_loaders_refuse_bad_files_and_arrays(case, tmp_path):
    call, *rest = LOADER_CASES[case]
    _refused(lambda: call(tmp_path), *rest)


# --- checkpoints -----------------------------------------------------------------------------

TREE = {"w": np.arange(6.0).reshape(2, 3), "b": (np.zeros(3, np.float32),)}


def _ckpt(tmp, mutate=None):
    path = tmp / "ckpt.npz"
    save_checkpoint(path, TREE)
    if mutate is not None:
        path.write_bytes(mutate(path.read_bytes(), tmp))
    return path


def _npz(**arrays):
    def make(_, tmp):
        np.savez(tmp / "x.npz", **arrays)
        return (tmp / "x.npz").read_bytes()

    return make


def _drop_leaf(raw, tmp):
    (tmp / "r.npz").write_bytes(raw)
    with zipfile.ZipFile(tmp / "r.npz") as z, zipfile.ZipFile(tmp / "s.npz", "w") as out:
        for name in z.namelist():
            if name != "leaf_00001.npy":
                out.writestr(name, z.read(name))
    return (tmp / "s.npz").read_bytes()


def _load(t, mutate=None, like=TREE):
    return load_checkpoint(_ckpt(t, mutate), like)


PICKLED = _npz(leaf_00000=np.array([{}]), treedef="x")
CKPT_CASES = {
    "truncated": (lambda t: _load(t, lambda b, _: b[:60]), "path"),
    "half": (lambda t: _load(t, lambda b, _: b[: len(b) // 2]), "path"),
    "garbage": (lambda t: _load(t, lambda b, _: b"not a zip"), "path"),
    "empty": (lambda t: _load(t, lambda b, _: b""), "path"),
    "pickle": (lambda t: _load(t, PICKLED), "path"),
    "no_treedef": (lambda t: _load(t, _npz(leaf_00000=np.ones(3))), "path"),
    "missing_leaf": (lambda t: _load(t, _drop_leaf), "path"),
    "missing_file": (lambda t: load_checkpoint(t / "none.npz", TREE), "path", FileNotFoundError),
    "extra_key": (lambda t: _load(t, like=TREE | {"c": 1.0}), "like", ValueError, "['c']"),
    "shape": (lambda t: _load(t, like=TREE | {"w": np.ones((3, 2))}), "like"),
    "dtype": (lambda t: _load(t, like=TREE | {"w": np.ones((2, 3), np.int32)}), "like"),
    "save_object_leaf": (lambda t: save_checkpoint(t / "o.npz", {"a": object()}), "tree"),
    "save_to_directory": (lambda t: save_checkpoint(t, TREE), "path"),
    "save_prng_key": (lambda t: save_checkpoint(t / "k.npz", {"k": jax.random.key(0)}), "tree"),
    "save_under_a_file": (lambda t: save_checkpoint(_w(t, b"") / "c.npz", TREE), "path"),
}


@pytest.mark.parametrize("case", CKPT_CASES)
def test_checkpoints_refuse_bad_files(case, tmp_path):
    call, *rest = CKPT_CASES[case]
    _refused(lambda: call(tmp_path), *rest)


# --- trainer and population ------------------------------------------------------------------

X = jnp.asarray(np.linspace(-1, 1, 24).reshape(8, 3))
Y = X @ jnp.asarray([1.0, -2.0, 0.5])
PARAMS = {"w": jnp.zeros(3), "b": (jnp.zeros(()),)}


def quad(params, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ params["w"] + params["b"][0] - y) ** 2)


GD, ADAM = (optim.make_optimizer(o, learning_rate=0.1) for o in ("gd", "adam"))
nan = float("nan")


def _train(data=(X, Y), params=PARAMS, step_kw=None, loss=quad, opt=GD, **kw):
    step = trainer.make_step(loss, opt, **({"chunk_size": 4} | (step_kw or {})))
    return trainer.train(step, params, data, **({"num_steps": 8} | kw))


# Label 4 with 4 classes: NaN under jit at step 0, before any update -> bad input, not diverged
XENT = losses.make_loss_fn(lambda p, x: x @ p["w"], "xent")
W4, BAD_Y = {"w": jnp.zeros((3, 4))}, jnp.asarray([0, 1, 2, 3, 4, 0, 1, 2])
TRAIN_CASES = {
    "empty_data": (lambda: _train((X[:0], Y[:0])), "data"),
    "nan_x": (lambda: _train((X.at[0, 0].set(nan), Y)), "data"),
    "inf_y": (lambda: _train((X, Y.at[3].set(jnp.inf))), "data"),
    "numpy_nan": (lambda: _train(data.Dataset(np.asarray(X) * nan, np.asarray(Y))), "data"),
    "lr_nan": (lambda: _train(hyperparams={"learning_rate": nan}), "hyperparams"),
    "lr_inf": (lambda: _train(hyperparams={"learning_rate": np.inf}), "hyperparams"),
    "lr_negative": (lambda: _train(hyperparams={"learning_rate": -0.1}), "hyperparams"),
    "lr_zero": (lambda: _train(hyperparams={"learning_rate": 0.0}), "hyperparams"),
    "lr_str": (lambda: _train(hyperparams={"learning_rate": "0.1"}), "hyperparams"),
    "warmup_nan": (lambda: _train(hyperparams={"warmup_steps": nan}), "hyperparams"),
    "lr_shape": (lambda: _train(hyperparams={"learning_rate": np.ones(2)}), "hyperparams"),
    "make_opt_lr_nan": (lambda: optim.make_optimizer("gd", learning_rate=nan), "learning_rate"),
    "opt_state_nan_lr": (
        lambda: _train(opt_state=optim.set_hyperparams(GD.init(PARAMS), {"learning_rate": nan})),
        "opt_state",
    ),
    "params_nan": (lambda: _train(params=PARAMS | {"w": jnp.full(3, nan)}), "params"),
    "params_empty": (lambda: _train(params={}, loss=lambda p, b: jnp.mean(b[1])), "params"),
    "hyperparams_list": (lambda: _train(hyperparams=[0.1]), "hyperparams"),
    "opt_state_of_adam": (lambda: _train(opt_state=ADAM.init(PARAMS)), "opt_state"),
    "opt_state_shapes": (lambda: _train(opt=ADAM, opt_state=ADAM.init({"w": X})), "opt_state"),
    "num_steps_bool": (lambda: _train(num_steps=True), "num_steps"),
    "num_steps_float": (lambda: _train(num_steps=1e30), "num_steps"),
    "num_steps_2.0": (lambda: _train(num_steps=2.0), "num_steps"),
    "num_steps_huge": (lambda: _train(num_steps=2**40), "num_steps"),
    "num_steps_negative": (lambda: _train(num_steps=-3), "num_steps"),
    "batch_size_0": (lambda: _train(step_kw={"batch_size": 0}), "batch_size"),
    "batch_size_negative": (lambda: _train(step_kw={"batch_size": -2}), "batch_size"),
    "batch_size_gt_n": (lambda: _train(step_kw={"batch_size": 9}), "batch_size"),
    "batch_size_bool": (lambda: _train(step_kw={"batch_size": True}), "batch_size"),
    "chunk_size_0": (lambda: _train(step_kw={"chunk_size": 0}), "chunk_size"),
    "chunk_size_float": (lambda: _train(step_kw={"chunk_size": 2.0}), "chunk_size"),
    "loss_goal_nan": (lambda: _train(loss_goal=nan), "loss_goal"),
    "threshold_nan": (lambda: _train(divergence_threshold=nan), "divergence_threshold"),
    "threshold_str": (lambda: _train(divergence_threshold="1"), "divergence_threshold"),
    "key_str": (lambda: _train(step_kw={"batch_size": 2}, key="k"), "key"),
    "xent_label_out_of_range": (lambda: _train((X, BAD_Y), W4, loss=XENT), "data"),
    # a NaN or inf hidden inside a plain optax optimizer: the first update is NaN from finite
    # params and gradients -> named, not "diverged at step 0"
    "optax_sgd_nan": (lambda: _train(opt=optax.sgd(nan)), "optimizer"),
    "optax_adam_inf": (lambda: _train(opt=optax.adam(np.inf)), "optimizer"),
    "threshold_below_initial_loss": (
        lambda: _train(divergence_threshold=1e-12),
        "divergence_threshold",
    ),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_trainer_refuses_bad_input(case):
    _refused(*TRAIN_CASES[case])


def _pop(lrs=(0.1, 0.2), seeds=None, data=(X, Y), mode="loop", chunk_size=4, p0=PARAMS, **kw):
    pstep = population.make_step(kw.pop("loss", quad), GD, mode=mode, chunk_size=chunk_size)
    seeds = np.zeros(len(lrs), int) if seeds is None else seeds
    init = lambda key: p0  # noqa: E731
    kw = {"num_steps": 8} | kw
    return population.train_population(pstep, init, data, learning_rates=lrs, seeds=seeds, **kw)


POP_CASES = {
    "lr_nan": (lambda: _pop((0.1, nan)), "learning_rates"),
    "lr_inf": (lambda: _pop((np.inf, 0.1)), "learning_rates"),
    "lr_empty": (lambda: _pop(()), "learning_rates"),
    "seeds_float": (lambda: _pop(seeds=np.zeros(2)), "seeds"),
    "seeds_huge": (lambda: _pop(seeds=np.array([0, 2**40])), "seeds"),
    "num_steps_float": (lambda: _pop(num_steps=1e30), "num_steps"),
    "nan_data": (lambda: _pop(data=(X * nan, Y)), "data"),
    "empty_data": (lambda: _pop(data=(X[:0], Y[:0])), "data"),
    "hyper_nan": (lambda: _pop(hyperparams={"eta_init": nan}), "hyperparams"),
    "hyper_shape": (lambda: _pop(hyperparams={"eta_init": np.zeros(3)}), "hyperparams"),
    "lr_str": (lambda: _pop(("0.1", "x")), "learning_rates"),
    "seeds_negative": (lambda: _pop(seeds=np.array([0, -1])), "seeds"),
    "opt_state_nan": (
        lambda: _pop(
            params=jax.tree.map(lambda a: jnp.stack([a, a]), PARAMS),
            opt_state=jax.tree.map(lambda a: jnp.stack([a, a * nan]), GD.init(PARAMS)),
        ),
        "opt_state",
    ),
    "label_out_of_range_vmap": (
        lambda: _pop((0.1,), data=(X, BAD_Y), mode="vmap", p0=W4, loss=XENT),
        "data",
    ),
    "label_out_of_range_loop": (lambda: _pop(data=(X, BAD_Y), p0=W4, loss=XENT), "data"),
    "params_nan": (
        lambda: _pop(params={"w": jnp.full((2, 3), nan), "b": (jnp.zeros(2),)}),
        "params",
    ),
    "threshold_nan": (lambda: _pop(divergence_threshold=nan), "divergence_threshold"),
}


@pytest.mark.parametrize("case", POP_CASES)
def test_population_refuses_bad_input(case):
    _refused(*POP_CASES[case])


def test_a_diverging_run_is_diverged_not_an_error():
    # GD on a quadratic with lr far beyond 2 / lambda_max: finite inputs, loss blows up
    # (lambda_max ~ 1.07, so lr = 1e4 grows the error ~1e4-fold a step: inf within 100 steps)
    kw = {"step_kw": {"chunk_size": 50}, "num_steps": 200}
    h = _train(hyperparams={"learning_rate": 1e4}, **kw).history
    assert h.diverged and 0 < h.stop_step < 200 and np.isfinite(h["loss"][0])
    assert not np.isfinite(h["loss"][-1])
    h = _train(hyperparams={"learning_rate": 5.0}, divergence_threshold=1e3, **kw).history
    assert h.diverged and h["loss"][h.stop_step] > 1e3 and np.isfinite(h["loss"]).all()
    assert not _train(**kw).history.diverged


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_a_diverging_member_is_flagged_and_the_sweep_goes_on(mode):
    res = _pop((0.1, 1e4), mode=mode, num_steps=200, chunk_size=50)
    np.testing.assert_array_equal(res.diverged, [False, True])
    assert res.diverged_step[1] > 0 and np.isfinite(res.metrics["loss"][0]).all()
