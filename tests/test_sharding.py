"""Data-parallel operators: equal to the single-device ones; memory-based chunk sizes.

Here on a one-device mesh; the check on 4 simulated devices runs in a subprocess, in
tests/test_four_devices.py (with the sharded population's).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from core_problems import make_problem

import hessian_lab as hl
from hessian_lab import testing
from hessian_lab import tree as tu
from hessian_lab._sharding import (
    _hvp_temp_bytes,
    chunk_size_for_memory,
    shard_data,
    sharded_full_data_ggn,
    sharded_full_data_hvp,
)


def _one_device_mesh():
    return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


def test_one_device_mesh_equals_full_data_hvp_jitted_and_eager(getkey):
    params, apply, out_loss, loss_fn, data = make_problem(getkey(), n=23)
    mesh = _one_device_mesh()
    v = tu.random_like(getkey(), params)
    ref = hl.full_data_hvp(loss_fn, params, data, chunk_size=5)(v)
    eager = sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=5)(v)
    jitted = jax.jit(
        lambda p, d, v: sharded_full_data_hvp(loss_fn, p, d, mesh=mesh, chunk_size=5)(v)
    )(params, data, v)
    ggn_ref = hl.full_data_ggn(apply, out_loss, params, *data, chunk_size=4)(v)
    ggn = sharded_full_data_ggn(apply, out_loss, params, *data, mesh=mesh, chunk_size=4)(v)
    for a, b in [(ref, eager), (ref, jitted), (ggn_ref, ggn)]:
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-14)


def test_linearized_sharded_hvp_equals_the_dense_hessian_and_skips_the_forward_pass(getkey):
    params, _, _, loss_fn, data = make_problem(getkey(), act="tanh", n=23)
    H = np.asarray(testing.dense_hessian(loss_fn, params, data))
    mesh = _one_device_mesh()
    vs = [tu.random_like(getkey(), params) for _ in range(3)]
    ops = {
        lin: sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=5, linearize=lin)
        for lin in (True, False)
    }
    for lin, op in ops.items():
        for v in vs:
            np.testing.assert_allclose(
                tu.ravel(op(v))[0], H @ tu.ravel(v)[0], rtol=1e-10, atol=1e-12, err_msg=str(lin)
            )
    # A linearised product evaluates only the stored linear map: no tanh (the forward pass)
    # left in it, while the recomputing product runs the forward pass every time.
    assert "tanh" not in str(jax.make_jaxpr(ops[True])(vs[0]))
    assert "tanh" in str(jax.make_jaxpr(ops[False])(vs[0]))
    # and it runs under jit, built from traced params
    jitted = jax.jit(
        lambda p, v: sharded_full_data_hvp(
            loss_fn, p, data, mesh=mesh, chunk_size=5, linearize=True
        )(v)
    )(params, vs[0])
    np.testing.assert_allclose(tu.ravel(jitted)[0], H @ tu.ravel(vs[0])[0], rtol=1e-10)
    with pytest.raises(ValueError, match=r"^linearize: "):
        sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=5, linearize=1)


def test_shard_data_places_arrays_on_the_mesh(getkey):
    _, _, _, _, data = make_problem(getkey(), n=8)
    placed = shard_data(data, _one_device_mesh())
    for a, b in zip(jax.tree.leaves(data), jax.tree.leaves(placed), strict=True):
        np.testing.assert_array_equal(a, b)
        assert isinstance(b.sharding, jax.sharding.NamedSharding)


def test_bad_mesh_axis_and_chunk_size_raise_named_errors(getkey):
    params, _, _, loss_fn, data = make_problem(getkey(), n=6)
    mesh = _one_device_mesh()
    with pytest.raises(ValueError, match=r"^axis: .*'data'"):
        sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, axis="batch", chunk_size=2)
    with pytest.raises(ValueError, match=r"^mesh: "):
        sharded_full_data_hvp(loss_fn, params, data, mesh=jax.devices(), chunk_size=2)
    with pytest.raises(ValueError, match=r"^chunk_size: .*\[1, n // devices = 6\]"):
        sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=7)
    with pytest.raises(ValueError, match=r"^chunk_size: "):
        sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=2.0)


def test_chunk_size_for_memory_fits_the_budget_and_grows_with_it(getkey):
    params, _, _, loss_fn, data = make_problem(getkey(), n=400, sizes=(16, 32, 32, 4))
    per_chunk = [_hvp_temp_bytes(loss_fn, params, data, c) for c in (50, 100)]
    assert per_chunk[1] > per_chunk[0]  # temporaries do grow with the chunk
    budget = per_chunk[1]
    c = chunk_size_for_memory(budget, loss_fn, params, data, trial_size=16)
    assert 1 <= c <= 400
    assert _hvp_temp_bytes(loss_fn, params, data, c) <= budget
    assert c >= 50  # the linear fit is not wildly pessimistic
    assert chunk_size_for_memory(10**12, loss_fn, params, data, num_devices=4) == 100
    # the chosen size runs
    H = hl.full_data_hvp(loss_fn, params, data, chunk_size=c)
    assert np.isfinite(float(tu.norm(H(params))))
    with pytest.raises(ValueError, match=r"^budget_bytes: .*too small"):
        chunk_size_for_memory(1, loss_fn, params, data)
    with pytest.raises(ValueError, match=r"^budget_bytes: "):
        chunk_size_for_memory(0, loss_fn, params, data)
    with pytest.raises(ValueError, match=r"^num_devices: "):
        chunk_size_for_memory(budget, loss_fn, params, data, num_devices=401)
    assert jnp.ndim(c) == 0
