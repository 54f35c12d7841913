"""Four simulated CPU devices: the data-parallel estimators equal the single-device ones, and a
sharded population (members split over the mesh) equals the vmapped one.

Several devices on a CPU need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before jax
starts, which this (already started) pytest process cannot do: both checks run in one subprocess
(one start-up and import for the two; a child per check cost 5-10 s of CPU more), with the same
strict settings as tests/conftest.py. Each check runs in its own namespace and reports on its own:
one failing neither stops nor hides the other. The single-device tests of the same code are in
tests/test_sharding.py and tests/test_sharded_population.py.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

TESTS_DIR = pathlib.Path(__file__).parent

FOUR = "--xla_force_host_platform_device_count=4"
ESTIMATORS = textwrap.dedent(
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
    """
)
POPULATION = textwrap.dedent(
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
    """
)
# The child runs each check in a fresh namespace and prints one line per check, OK or FAILED
# (then the traceback); argv[1] is this directory (ESTIMATORS imports core_problems from it).
DRIVER = textwrap.dedent(
    """
    import json
    import sys
    import traceback

    for name, source in json.loads(sys.stdin.read()).items():
        try:
            exec(compile(source, f"<{name}>", "exec"), {"__name__": name})
        except Exception:
            print(f"== {name}: FAILED", flush=True)
            traceback.print_exc(file=sys.stdout)
        else:
            print(f"== {name}: OK", flush=True)
    """
)


@pytest.fixture(scope="module")
def four_devices():
    """The child's run of both checks on 4 simulated CPU devices (a ``CompletedProcess``)."""
    # 4 devices, plus the suite's other XLA flags (conftest: the unoptimised LLVM back end and
    # the older fusion emitter, for compile time), as tests/test_multiprocess.py passes them on
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join([*flags, FOUR]), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", DRIVER, str(TESTS_DIR)],
        input=json.dumps({"estimators": ESTIMATORS, "population": POPULATION}),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _assert_passed(proc, name):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"== {name}: OK" in proc.stdout.splitlines(), proc.stdout + proc.stderr


@pytest.mark.slow
def test_four_devices_match_single_device_estimators(four_devices):
    """top_eigs, trace and spectral_density agree to float64 rounding on 4 simulated devices."""
    _assert_passed(four_devices, "estimators")


@pytest.mark.slow
def test_four_devices_sharded_population_equals_vmapped(four_devices):
    """Metrics, stop/divergence steps and final states agree on 4 simulated CPU devices."""
    _assert_passed(four_devices, "population")
