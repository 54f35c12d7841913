"""The UV-model study: exact maps and eigenvalue against the real model, the TINY run, I/O."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from matplotlib.figure import Figure

from hessian_lab.studies import _uv_maps as um
from hessian_lab.studies import uv_model


@pytest.fixture(scope="module")
def tiny():
    return uv_model.run(uv_model.TINY)


def _setup(getkey, width, in_dim, param="ntp", x_norm=1.3, y=0.7):
    x = jax.random.normal(getkey(), (in_dim,))
    x = x_norm * x / jnp.linalg.norm(x)
    return (
        um.init_params(getkey(), width, in_dim),
        x,
        jnp.asarray(y),
        um.output_divisor(param, width),
    )


@pytest.mark.parametrize("param", ["ntp", "mup"])
def test_function_space_map_matches_parameter_gd(getkey, param):
    base, x, y, m = _setup(getkey, 9, 3, param)
    f0, th0 = um.output(base, x, m), um.ntk(base, x, m)
    kappas = np.array([0.3, 0.8, 1.1, 1.25, 1.28])  # period 1, 1, 2, 4, 8: not chaotic
    etas = jnp.asarray(kappas * m / (1.3 * 0.7))
    scales = jnp.full(etas.shape, 0.05)
    f_p, th_p = um.trajectory("params", base, etas, scales, x, y, m, num_steps=3000)
    f_m, th_m = um.trajectory("map", (f0, th0), etas, scales, x, y, m, num_steps=3000)
    np.testing.assert_allclose(f_p, f_m, rtol=1e-9, atol=1e-9 * 0.7)
    np.testing.assert_allclose(th_p, th_m, rtol=1e-9)


def test_tiny_levels_agree(tiny):
    assert np.all(tiny.level_gap < 1e-9)


@pytest.mark.parametrize("param", ["ntp", "mup"])
@pytest.mark.parametrize(("width", "in_dim"), [(5, 1), (6, 3)])
def test_top_hessian_eigenvalue_matches_dense(getkey, param, width, in_dim):
    params, x, y, m = _setup(getkey, width, in_dim, param)
    flat, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda p: um.loss(unravel(p), x, y, m)))(flat)
    top = jnp.linalg.eigvalsh(hess)[-1]  # top algebraic eigenvalue
    f, th = um.output(params, x, m), um.ntk(params, x, m)
    assert abs(float(f - y)) > 0.1  # away from the minimum, where lambda_H != Theta
    s2 = (x @ x) / m**2
    np.testing.assert_allclose(um.top_hessian_eig(f, th, y, s2), top, rtol=1e-10)
    assert abs(float(top - th)) > 1e-3


def test_dynamics_depend_on_kappa_only():
    # Same kappa = eta |y| |x| / m and the same (f/y, eta Theta) at the start: same orbit.
    out = []
    for eta, y, xn, n in [(2.0, 1.0, 1.0, 9), (0.5, 3.0, 2.0, 36)]:
        m, kappa = np.sqrt(n), 1.27
        eta = kappa * m / (abs(y) * xn)
        state = (0.02 * y, 0.05 / eta)
        z = []
        for _ in range(200):
            state = um.map_step(state, eta, y, xn**2 / m**2)
            z.append((state[0] / y, eta * state[1]))
        out.append(np.array(z))
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10, atol=1e-12)


def test_tiny_bifurcation_periods(tiny):
    per, kappa = tiny.bif_period, tiny.kappa
    assert per[0] == 1 and per[np.searchsorted(kappa, 1.05)] == 2
    first = [np.flatnonzero(per == p)[0] for p in (1, 2, 4, 8)]
    assert first == sorted(first)
    # Doubling points on the real model agree with the map's; the map's flips are bracketed.
    np.testing.assert_allclose(tiny.doubling_params, tiny.doubling_map, atol=1e-4)
    flo = tiny.doubling_floquet
    assert np.all(np.diff(flo) > 0)
    assert abs(flo[1] - (np.sqrt(5.0) - 1.0)) < 1e-9  # measured; equals sqrt(5) - 1
    assert np.all(np.abs(tiny.doubling_map[0] - flo) < 5e-3)


def test_save_load_round_trip(tiny, tmp_path):
    uv_model.save(tiny, tmp_path / "run")
    back = uv_model.load(tmp_path / "run")
    assert back.config == tiny.config
    for f in dataclasses.fields(uv_model.Results):
        if f.name != "config":
            a, b = getattr(tiny, f.name), getattr(back, f.name)
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)


def test_figures_and_summary(tiny):
    figs = uv_model.figures(tiny)
    assert set(figs) == {"uv_phase_diagram", "uv_bifurcation", "uv_trajectories"}
    assert all(isinstance(f, Figure) for f in figs.values())
    s = uv_model.summary(tiny)
    assert s["kappa_doubling_1"] == 1.0 and np.isfinite(s["ratio_1"])
    assert 1.288 < s["kappa_chaos_onset"] < 1.32


def test_phase_diagram_regimes(tiny):
    names = {uv_model.REGIMES[i] for i in np.unique(tiny.phase_regime)}
    assert {"diverged", "progressive sharpening", "sharpness reduction"} <= names
    assert np.all(np.isnan(tiny.phase_sharpness[tiny.phase_regime == 0]))


def test_divergence_is_recorded_not_raised(getkey):
    base, x, y, m = _setup(getkey, 4, 1)
    out = um.simulate("params", base, jnp.array([50.0, 0.01]), jnp.array([3.0, 0.1]), x, y, m,
                      num_steps=200, window=4)  # fmt: skip
    assert out["diverged"].tolist() == [True, False]
    assert np.all(np.isfinite(out["f"]))


def test_sweep_compiles_once(getkey):
    base, x, y, m = _setup(getkey, 4, 1)
    um.simulate("params", base, jnp.array([0.1, 0.2]), jnp.ones(2), x, y, m, num_steps=5, window=4)
    size = um._simulate_jit._cache_size()
    for etas in ([0.3, 0.4], [0.5, 0.6, 0.7]):
        e = jnp.asarray(etas)
        um.simulate("params", base, e, jnp.ones(e.shape), x, y, m, num_steps=7, window=4)
    assert um._simulate_jit._cache_size() == size


@pytest.mark.parametrize(
    ("field", "value"),
    [("param", "sp"), ("width", 0), ("y", 0.0), ("kappa_max", 0.5), ("max_period", 12),
     ("window", 8), ("num_doublings", 9), ("period_tol", 2.0), ("trajectory_scales", (1.0,))],
)  # fmt: skip
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(uv_model.TINY, **{field: value})
