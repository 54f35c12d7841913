"""Trainer: equals a hand-written optax loop, traces once per sweep, stops cleanly, saves."""

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hessian_lab import losses, models, optim, trainer
from hessian_lab.callbacks import grad_norm

NET = models.mlp(4, 2, depth=1, width=8, activation="tanh")


def _problem(n=24):
    x = jax.random.normal(jax.random.key(1), (n, 4))
    y = jax.random.normal(jax.random.key(2), (n, 2))
    return NET.init(jax.random.key(0)), (x, y)


LOSS = losses.make_loss_fn(NET.apply, "mse")


def _hand_loop(opt, params, data, steps, batch_size=None, key=None):
    @jax.jit
    def step(params, s, batch):
        loss, g = jax.value_and_grad(LOSS)(params, batch)
        u, s = opt.update(g, s, params)
        return optax.apply_updates(params, u), s, loss

    s = opt.init(params)
    out = []
    n = data[0].shape[0]
    for t in range(steps):
        batch = data
        if batch_size is not None:
            per = n // batch_size
            perm = jax.random.permutation(jax.random.fold_in(key, t // per), n)
            idx = perm[(t % per) * batch_size : (t % per + 1) * batch_size]
            batch = (data[0][idx], data[1][idx])
        params, s, loss = step(params, s, batch)
        out.append(float(loss))
    return params, np.array(out)


@pytest.mark.parametrize(
    "opt",
    [
        optax.adam(0.01),
        optax.sgd(0.1, momentum=0.9),
        optim.make_optimizer("gi_adam", learning_rate=0.01),
    ],
)
def test_matches_hand_written_loop(opt):
    params, data = _problem()
    want_params, want_loss = _hand_loop(opt, params, data, 7)
    res = trainer.train(trainer.make_step(LOSS, opt, chunk_size=3), params, data, num_steps=7)
    np.testing.assert_allclose(res.history["loss"], want_loss, rtol=1e-12)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14),
        res.params,
        want_params,
    )
    assert res.history.stop_reason == "num_steps" and res.history.num_updates == 7


def test_minibatch_sgd_matches_hand_loop_and_key():
    params, data = _problem()
    opt = optax.sgd(0.05)
    key = jax.random.key(7)
    want_params, want_loss = _hand_loop(opt, params, data, 8, batch_size=5, key=key)
    step = trainer.make_step(LOSS, opt, batch_size=5, chunk_size=8)
    res = trainer.train(step, params, data, num_steps=8, key=key)
    np.testing.assert_allclose(res.history["loss"], want_loss, rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11), res.params, want_params)
    other = trainer.train(step, params, data, num_steps=8, key=jax.random.key(8))
    assert not np.allclose(other.history["loss"], res.history["loss"])


def test_sweep_of_eight_learning_rates_traces_once():
    params, data = _problem()
    count = [0]

    def loss_fn(p, b):
        count[0] += 1  # runs only while tracing
        return LOSS(p, b)

    opt = optim.make_optimizer("momentum", learning_rate=optim.linear_warmup(0.01, 0.1, 3))
    step = trainer.make_step(loss_fn, opt, callbacks=(grad_norm(every=2),), chunk_size=3)
    assert count[0] == 0  # make_step compiles nothing
    losses_ = []
    for i, lr in enumerate(np.geomspace(0.01, 0.5, 8)):
        r = trainer.train(
            step, params, data, num_steps=6, hyperparams={"learning_rate": lr, "eta_init": lr / 10}
        )
        losses_.append(r.history["loss"][-1])
        if i == 0:
            after_first = count[0]
    assert after_first > 0 and count[0] == after_first
    assert len(set(losses_)) == 8


def test_one_chunk_call_per_chunk_and_progress_counts():
    params, data = _problem()
    calls, seen = [], []
    step = trainer.make_step(LOSS, optax.sgd(0.1), callbacks=[grad_norm()], chunk_size=10)
    real = step.run
    step = step._replace(run=lambda *a: calls.append(1) or real(*a))
    res = trainer.train(step, params, data, num_steps=25, progress=lambda d, t: seen.append((d, t)))
    assert len(calls) == 3 and res.history["loss"].shape == (25,)
    assert res.history["grad_norm"].shape == (25,)
    assert seen == [(10, 25), (20, 25), (25, 25)]
    # a run that stops early still reports the total last; progress=True draws a bar
    seen.clear()
    trainer.train(
        step, params, data, num_steps=25, loss_goal=np.inf, progress=lambda *a: seen.append(a)
    )
    assert seen == [(25, 25)] and len(calls) == 4


def test_progress_bar(capsys):
    params, data = _problem()
    step = trainer.make_step(LOSS, optax.sgd(0.1), chunk_size=4)
    trainer.train(step, params, data, num_steps=8, progress=True)
    out = capsys.readouterr().out
    assert "training" in out and "8/8" in out


def test_divergence_stops_cleanly():
    params, data = _problem()
    opt = optim.make_optimizer("gd", learning_rate=0.1)
    res = trainer.train(
        trainer.make_step(LOSS, opt, chunk_size=4),
        params,
        data,
        num_steps=50,
        hyperparams={"learning_rate": 50.0},
        divergence_threshold=1e4,
    )
    h = res.history
    assert h.diverged and h.stop_reason == "diverged"
    t = h.diverged_step
    assert 0 < t < 50 and h["loss"].shape == (t + 1,)
    assert h["loss"][t] > 1e4 and np.all(h["loss"][:t] <= 1e4)
    assert h.num_updates == t
    # the returned params are theta_t, whose loss is the recorded one
    np.testing.assert_allclose(float(LOSS(res.params, data)), h["loss"][t], rtol=1e-12)
    # without a threshold the run goes on until the loss is non-finite
    step = trainer.make_step(LOSS, opt, chunk_size=500)
    r2 = trainer.train(step, params, data, num_steps=2000, hyperparams={"learning_rate": 50.0})
    assert r2.history.diverged and r2.history.diverged_step > t
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(r2.params))


def test_goals_stop_the_run():
    params, data = _problem()
    opt = optax.sgd(0.1)
    full = trainer.train(trainer.make_step(LOSS, opt, chunk_size=30), params, data, num_steps=30)
    goal = full.history["loss"][12] * 1.0000001
    step = trainer.make_step(LOSS, opt, chunk_size=7)
    res = trainer.train(step, params, data, num_steps=30, loss_goal=goal)
    assert res.history.stop_reason == "loss_goal" and res.history.stop_step == 12
    assert not res.history.diverged and res.history.diverged_step == -1
    acc = lambda p, b: -LOSS(p, b)  # noqa: E731  (any scalar works as "accuracy")
    step = trainer.make_step(LOSS, opt, accuracy_fn=acc)
    res = trainer.train(step, params, data, num_steps=30, accuracy_goal=-goal)
    assert res.history.stop_reason == "accuracy_goal" and res.history.stop_step == 12
    np.testing.assert_allclose(res.history["accuracy"], -res.history["loss"])


def test_history_and_checkpoint_round_trip(tmp_path):
    params, data = _problem()
    opt = optim.make_optimizer("adam", learning_rate=0.01)
    res = trainer.train(
        trainer.make_step(LOSS, opt, callbacks=[grad_norm(every=2)]), params, data, num_steps=5
    )
    trainer.save_history(res.history, tmp_path / "run", config={"lr": 0.01})
    back = trainer.load_history(tmp_path / "run")
    assert back.stop_reason == res.history.stop_reason and back.num_updates == 5
    for k, v in res.history.metrics.items():
        np.testing.assert_array_equal(back[k], v)
    assert (tmp_path / "run" / "history.csv").read_text().startswith("step,")
    trainer.save_checkpoint(tmp_path / "ckpt.npz", (res.params, res.opt_state))
    like = (params, opt.init(params))
    p2, s2 = trainer.load_checkpoint(tmp_path / "ckpt.npz", like)
    jax.tree.map(np.testing.assert_array_equal, (p2, s2), (res.params, res.opt_state))
    # resuming from the checkpoint continues the same trajectory
    step = trainer.make_step(LOSS, opt)
    a = trainer.train(step, res.params, data, num_steps=3, opt_state=res.opt_state)
    b = trainer.train(step, p2, data, num_steps=3, opt_state=s2)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    with pytest.raises(ValueError, match="like"):
        trainer.load_checkpoint(tmp_path / "ckpt.npz", params)


def test_truncated_checkpoint_raises_naming_the_path(tmp_path):
    path = tmp_path / "ckpt.npz"
    trainer.save_checkpoint(path, {"w": np.arange(50.0)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=f"cannot read {path}"):
        trainer.load_checkpoint(path, {"w": np.zeros(50)})
    path.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=str(path)):
        trainer.load_checkpoint(path, {"w": np.zeros(50)})


def test_saved_files_honour_the_umask(tmp_path):
    params, _ = _problem()
    old = os.umask(0o022)
    try:
        trainer.save_checkpoint(tmp_path / "a.npz", params)
        os.umask(0o077)
        trainer.save_checkpoint(tmp_path / "b.npz", params)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.npz").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.npz").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"data": (jnp.ones((5, 4)), jnp.ones((6, 2)))}, "data"),
        ({"data": ()}, "data"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 100}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"num_steps": 0}, "num_steps"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"hyperparams": {"learning_rate": 0.1}}, "opt_state"),
        ({"accuracy_goal": 0.9}, "accuracy_goal"),
        ({"callbacks": [lambda s: s]}, "callbacks"),
        ({"progress": "yes"}, "progress"),
    ],
)
def test_bad_input(kw, match):
    params, data = _problem()
    step_kw = {k: kw.pop(k) for k in ("batch_size", "chunk_size", "callbacks") if k in kw}
    args = {"data": data, "num_steps": 3} | kw
    with pytest.raises(ValueError, match=match):
        trainer.train(trainer.make_step(LOSS, optax.sgd(0.1), **step_kw), params, **args)
    with pytest.raises(ValueError, match="step"):
        trainer.train(LOSS, params, data, num_steps=3)  # the old signature
