"""Data-parallel operators: equal to the single-device ones; memory-based chunk sizes.

Several devices on a CPU need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before jax
starts, which this (already started) pytest process cannot do: the 4-device check runs in a
subprocess with the same strict settings as tests/conftest.py.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

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

TESTS_DIR = pathlib.Path(__file__).parent

FOUR = "--xla_force_host_platform_device_count=4"
FOUR_DEVICES = textwrap.dedent(
    """
    import sys
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.path.insert(0, sys.argv[1])
    from core_problems import make_problem

    import hessian_lab as hl
    from hessian_lab._sharding import shard_data, sharded_full_data_hvp

    assert jax.device_count() == 4, jax.devices()
    mesh = jax.make_mesh((4,), ("data",))  # Explicit axes (the default)
    auto = jax.make_mesh((2, 2), ("data", "model"), (jax.sharding.AxisType.Auto,) * 2)
    params, _, _, loss_fn, (x, y) = make_problem(jax.random.key(0), n=103, sizes=(4, 6, 3))
    v0 = hl.tree.random_like(jax.random.key(1), params)

    def estimates(H):
        return (
            hl.top_eigs(H, v0, k=3, num_iters=12).values,
            hl.trace(H, jax.random.key(2), params, num_matvecs=8).value,
            hl.spectral_density(H, jax.random.key(3), params, num_iters=8, num_probes=2).density,
        )

    @jax.jit
    def run(p, x, y):
        out = {}
        for n in (103, 100):  # 103 = 4 * 25 + 3 left over; 100 splits evenly
            d = (x[:n], y[:n])
            single = estimates(hl.full_data_hvp(loss_fn, p, d, chunk_size=7))
            sharded = estimates(sharded_full_data_hvp(loss_fn, p, d, mesh=mesh, chunk_size=7))
            out[f"n={n}"] = (single, sharded)
            lin = sharded_full_data_hvp(loss_fn, p, d, mesh=mesh, chunk_size=7, linearize=True)
            out[f"n={n}, linearized"] = (single, estimates(lin))
        # a 2 x 2 mesh with Auto axes: data split over "data" only, replicated over "model"
        d = (x, y)
        out["auto"] = (
            hl.full_data_hvp(loss_fn, p, d, chunk_size=5)(v0),
            sharded_full_data_hvp(loss_fn, p, d, mesh=auto, chunk_size=5)(v0),
        )
        return out

    for case, (single, sharded) in run(params, x, y).items():
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
            scale = max(float(np.max(np.abs(a))), 1.0)
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * scale, err_msg=str(case))

    # data placed on the mesh beforehand, eager call
    data = shard_data((x[:100], y[:100]), mesh)
    assert len(data[0].sharding.device_set) == 4
    H = sharded_full_data_hvp(loss_fn, params, data, mesh=mesh, chunk_size=25)
    # the reference on unplaced data (chunks of 25 cannot be sliced from data split 4 ways)
    ref = hl.full_data_hvp(loss_fn, params, (x[:100], y[:100]), chunk_size=25)(v0)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(H(v0)), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    # full_data_hvp on the placed data cannot slice chunks of 25 or 6 from 4 shards: it says so
    # up front, pointing to the sharded operator (instead of JAX's ShardingTypeError from inside
    # dynamic_slice)
    for chunk in (25, 6):
        try:
            hl.full_data_hvp(loss_fn, params, data, chunk_size=chunk)
        except ValueError as e:
            assert str(e).startswith("chunk_size") and "across 4 devices" in str(e), e
            assert "sharded_full_data_hvp" in str(e), e
        else:
            raise AssertionError(f"no ValueError for chunk_size={chunk} on data split 4 ways")

    for kwargs, word in [
        (dict(data=(x[:3], y[:3]), chunk_size=1), "data"),
        (dict(data=(x, y), chunk_size=26), "chunk_size"),
    ]:
        try:
            sharded_full_data_hvp(loss_fn, params, kwargs["data"], mesh=mesh,
                                  chunk_size=kwargs["chunk_size"])
        except ValueError as e:
            assert str(e).startswith(word), e
        else:
            raise AssertionError(f"no ValueError for {kwargs}")
    print("OK")
    """
)


@pytest.mark.slow
def test_four_devices_match_single_device_estimators():
    """top_eigs, trace and spectral_density agree to float64 rounding on 4 simulated devices."""
    # 4 devices, plus the suite's other XLA flags (conftest: the unoptimised LLVM back end,
    # some 40% less CPU time for the child), as tests/test_multiprocess.py passes them on
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, FOUR])}
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(TESTS_DIR)],
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("OK")


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
