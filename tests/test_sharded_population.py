"""Sharded populations: members split over a device mesh equal the vmapped population.

Several devices on a CPU need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before jax
starts, which this (already started) pytest process cannot do: the 4-device check runs in a
subprocess with the same strict settings as tests/conftest.py (as tests/test_sharding.py does).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from hessian_lab import losses, models, optim, population

FOUR = "--xla_force_host_platform_device_count=4"
FOUR_DEVICES = textwrap.dedent(
    """
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from hessian_lab import losses, models, optim, population
    from hessian_lab.callbacks import grad_norm, sharpness

    assert jax.device_count() == 4, jax.devices()
    net = models.mlp(4, 2, depth=1, width=8, activation="tanh")
    loss = losses.make_loss_fn(net.apply, "mse")
    data = (
        jax.random.normal(jax.random.key(1), (24, 4)),
        jax.random.normal(jax.random.key(2), (24, 2)),
    )
    opt = optim.make_optimizer("momentum", learning_rate=0.1)
    step_kw = dict(
        chunk_size=8, batch_size=8,
        callbacks=(grad_norm(every=2), sharpness(loss, every=4, num_iters=5)),
    )
    kw = dict(num_steps=16, divergence_threshold=1e3)
    vmap = population.make_step(loss, opt, mode="vmap", **step_kw)
    sharded = population.make_step(loss, opt, mode="sharded", **step_kw)
    # 6 members on 4 devices (padded to 8), some of them diverge; then 8 on a 2 x 2 mesh
    lrs = np.array([0.05, 0.2, 0.5, 30.0, 1.0, 60.0, 0.1, 0.3])
    seeds = np.array([0, 1, 2, 0, 1, 2, 3, 4])
    auto = jax.make_mesh((2, 2), ("pop", "x"), (jax.sharding.AxisType.Auto,) * 2)
    on_2x2 = population.make_step(loss, opt, mode="sharded", mesh=auto, axis="pop", **step_kw)
    for P, pstep in [(6, sharded), (8, on_2x2)]:
        ref = population.train_population(
            vmap, net.init, data, learning_rates=lrs[:P], seeds=seeds[:P], **kw
        )
        got = population.train_population(
            pstep, net.init, data, learning_rates=lrs[:P], seeds=seeds[:P], **kw
        )
        assert 2 <= ref.diverged.sum() < P, ref.diverged_step  # some diverge, some do not
        np.testing.assert_array_equal(got.diverged_step, ref.diverged_step)
        np.testing.assert_array_equal(got.stop_reason, ref.stop_reason)
        np.testing.assert_array_equal(got.stop_step, ref.stop_step)
        assert set(got.metrics) == set(ref.metrics)
        for k in ref.metrics:
            assert got.metrics[k].shape == ref.metrics[k].shape == (P, 16), k
            np.testing.assert_allclose(got.metrics[k], ref.metrics[k], rtol=1e-9, atol=1e-12,
                                       err_msg=k)
        for a, b in zip(jax.tree.leaves((ref.params, ref.opt_state)),
                        jax.tree.leaves((got.params, got.opt_state)), strict=True):
            assert a.shape == b.shape and a.shape[0] == P
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    # continuing a padded (6 on 4 devices) sharded population from a result equals the vmapped
    first = population.train_population(
        vmap, net.init, data, learning_rates=lrs[:6], seeds=seeds[:6], **kw
    )
    cont = dict(learning_rates=lrs[:6], seeds=seeds[:6], params=first.params,
                opt_state=first.opt_state, **kw)
    ref = population.train_population(vmap, None, data, **cont)
    got = population.train_population(sharded, None, data, **cont)
    for a, b in zip(jax.tree.leaves((ref.params, ref.opt_state, ref.metrics)),
                    jax.tree.leaves((got.params, got.opt_state, got.metrics)), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    # the member axis really is split: 8 members -> 2 per device on the default 4-device mesh
    got = population.train_population(sharded, net.init, data, learning_rates=lrs, seeds=seeds, **kw)
    leaf = jax.tree.leaves(got.params)[0]
    assert len(leaf.sharding.device_set) == 4
    assert {s.data.shape[0] for s in leaf.addressable_shards} == {2}
    print("OK")
    """
)


@pytest.mark.slow
def test_four_devices_sharded_population_equals_vmapped():
    """Metrics, stop/divergence steps and final states agree on 4 simulated CPU devices."""
    # 4 devices, plus the suite's other XLA flags (conftest: the unoptimised LLVM back end,
    # some 40% less CPU time for the child), as tests/test_multiprocess.py passes them on
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, FOUR])}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")


NET = models.mlp(3, 2, depth=1, width=4, activation="tanh")
LOSS = losses.make_loss_fn(NET.apply, "mse")
DATA = (
    jax.random.normal(jax.random.key(1), (10, 3)),
    jax.random.normal(jax.random.key(2), (10, 2)),
)
OPT = optim.make_optimizer("gd", learning_rate=0.1)
KW = dict(num_steps=6, divergence_threshold=1e3)


def test_one_device_mesh_equals_vmap():
    lrs, seeds = np.array([0.1, 0.4, 50.0]), np.array([0, 1, 2])
    vmap = population.make_step(LOSS, OPT, mode="vmap", chunk_size=3)
    ref = population.train_population(vmap, NET.init, DATA, learning_rates=lrs, seeds=seeds, **KW)
    mesh = jax.make_mesh((1,), ("members",), devices=jax.devices()[:1])
    sharded = population.make_step(LOSS, OPT, mode="sharded", mesh=mesh, chunk_size=3)
    got = population.train_population(
        sharded, NET.init, DATA, learning_rates=lrs, seeds=seeds, **KW
    )
    np.testing.assert_array_equal(got.diverged_step, ref.diverged_step)
    for k in ref.metrics:
        np.testing.assert_allclose(got.metrics[k], ref.metrics[k], rtol=1e-12, err_msg=k)
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12)


def test_bad_mesh_and_axis_raise_named_errors():
    mesh = jax.make_mesh((1,), ("members",), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"^mesh: "):
        population.make_step(LOSS, OPT, mode="sharded", mesh=jax.devices())
    with pytest.raises(ValueError, match=r"^axis: .*'members'"):
        population.make_step(LOSS, OPT, mode="sharded", mesh=mesh, axis="pop")
    with pytest.raises(ValueError, match=r"^mesh, axis: only used with mode='sharded'"):
        population.make_step(LOSS, OPT, mode="vmap", mesh=mesh)
    with pytest.raises(ValueError, match=r"^mode: .*'sharded'"):
        population.make_step(LOSS, OPT, mode="shard")
