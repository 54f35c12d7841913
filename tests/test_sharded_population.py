"""Sharded populations: members split over a device mesh equal the vmapped population.

Here on a one-device mesh; the check on 4 simulated devices runs in a subprocess, in
tests/test_four_devices.py (with the data-parallel estimators').
"""

import jax
import numpy as np
import pytest

from hessian_lab import losses, models, optim, population

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
