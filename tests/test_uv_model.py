"""The UV-model study: exact maps and eigenvalue against the real model, the TINY run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import study_contract
from jax.flatten_util import ravel_pytree

from hessian_lab import models
from hessian_lab.studies import uv_model
from hessian_lab.studies import uv_model_core as core

PROGRESS = []


@pytest.fixture(scope="module")
def tiny():
    return uv_model.run(uv_model.TINY, progress=lambda d, t: PROGRESS.append((d, t)))


def _setup(getkey, width, in_dim, param="ntp", x_norm=1.3, y=0.7):
    x = jax.random.normal(getkey(), (in_dim,))
    x = x_norm * x / jnp.linalg.norm(x)
    params = models.uv(in_dim, width, param=param).init(getkey())
    return params, x, jnp.asarray(y), core.output_divisor(param, width)


@pytest.mark.parametrize(("param", "in_dim", "width"), [("ntp", 1, 8), ("mup", 3, 9)])
def test_function_space_map_matches_parameter_gd(tiny, getkey, param, in_dim, width):
    # The late window after 3000 GD steps, real model vs map (NTP at TINY's shapes: its programs).
    base, x, y, m = _setup(getkey, width, in_dim, param)
    s2 = float(x @ x) / m**2
    kappas = np.array([0.3, 0.8, 1.1, 1.25, 1.28])  # period 1, 1, 2, 4, 8: not chaotic
    etas = jnp.asarray(kappas * m / (1.3 * 0.7))
    scales = jnp.full(etas.shape, 0.05)
    kw = {"param": param, "num_steps": 3000, "window": tiny.config.window}
    p = core.simulate("params", base, etas, scales, x, y, s2, **kw)
    f = core.simulate("map", core.observe(base, x, param), etas, scales, x, y, s2, **kw)
    assert not np.any(p["diverged"]) and np.all(np.isfinite(p["f"]))
    for k in ("f0", "theta0", "f", "theta"):
        np.testing.assert_allclose(p[k], f[k], rtol=1e-9, atol=1e-9 * 0.7, err_msg=k)


def test_tiny_levels_agree(tiny):
    assert np.all(tiny.level_gap < 1e-9)


@pytest.mark.parametrize("param", ["ntp", "mup"])
@pytest.mark.parametrize(("width", "in_dim"), [(5, 1), (6, 3)])
def test_top_hessian_eigenvalue_matches_dense(getkey, param, width, in_dim):
    params, x, _, m = _setup(getkey, width, in_dim, param)
    f, th = core.observe(params, x, param)
    y = f - 0.6  # away from the minimum, where lambda_H != Theta
    net = models.uv(in_dim, width, param=param)
    flat, unravel = ravel_pytree(params)
    loss = lambda p: 0.5 * (net.apply(unravel(p), x)[0] - y) ** 2  # noqa: E731
    top = jnp.linalg.eigvalsh(jax.jit(jax.hessian(loss))(flat))[-1]  # top algebraic eigenvalue
    ux = params["u"] @ x  # the NTK in closed form: (|x|^2 |v|^2 + |u x|^2) / m^2
    np.testing.assert_allclose(th, ((x @ x) * (params["v"] @ params["v"]) + ux @ ux) / m**2)
    np.testing.assert_allclose(core.top_hessian_eig(f, th, y, (x @ x) / m**2), top, rtol=1e-10)
    assert abs(float(top - th)) > 1e-3


def test_dynamics_depend_on_kappa_only():
    # Same kappa = eta |y| |x| / m and the same (f/y, eta Theta) at the start: same orbit.
    out = []
    for y, xn, n in [(1.0, 1.0, 9), (3.0, 2.0, 36)]:
        m, kappa = np.sqrt(n), 1.27
        eta = kappa * m / (abs(y) * xn)
        state = (0.02 * y, 0.05 / eta)
        z = []
        for _ in range(200):
            state = core.map_step(state, eta, y, xn**2 / m**2)
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


def test_tiny_summary_and_verdict(tiny):
    s = uv_model.summary(tiny)
    assert s["kappa_doubling"]["1->2"] == 1.0
    assert s["kappa_doubling"]["2->4"] == pytest.approx(np.sqrt(5.0) - 1.0, abs=1e-9)
    ratio = s["interval_ratio"]["1->2 .. 4->8"]
    assert 4.4 < ratio < uv_model.FEIGENBAUM  # approaches Feigenbaum's constant from below
    assert 1.288 < s["kappa_chaos_onset"] < 1.32
    assert sum(s["phase_regimes"].values()) == tiny.phase_regime.size
    assert "Feigenbaum" in uv_model.verdict(tiny)[1] and "- reproduced" in uv_model.verdict(tiny)[1]


def test_tiny_progress_counts_every_step(tiny):
    done = [d for d, _ in PROGRESS]
    assert done == sorted(done) and PROGRESS[-1] == (uv_model.total_steps(tiny.config),) * 2


def test_phase_diagram_regimes(tiny):
    names = {uv_model.REGIMES[i] for i in np.unique(tiny.phase_regime)}
    assert {"diverged", "progressive sharpening", "sharpness reduction"} <= names
    assert np.all(np.isnan(tiny.phase_sharpness[tiny.phase_regime == 0]))


def test_divergence_is_recorded_not_raised(tiny, getkey):
    base, x, y, m = _setup(getkey, 8, 1)  # TINY's shapes: its compiled program
    out = core.simulate("params", base, jnp.array([50.0, 0.01]), jnp.array([3.0, 0.1]), x, y,
                        float(x @ x) / m**2, param="ntp", num_steps=200, window=64)  # fmt: skip
    assert out["diverged"].tolist() == [True, False]
    assert np.all(np.isfinite(out["f"]))


def test_sweep_compiles_once(tiny, getkey):
    base, x, y, _ = _setup(getkey, 8, 1)
    kw = {"param": "ntp", "window": 64}
    core.simulate("params", base, jnp.array([0.1, 0.2]), jnp.ones(2), x, y, 0.2, num_steps=5, **kw)
    size = core.simulate_batch._cache_size()
    for etas in ([0.3, 0.4], [0.5, 0.6, 0.7]):
        e = jnp.asarray(etas)
        core.simulate("params", base, e, jnp.ones(e.shape), x, y, 0.2, num_steps=7, **kw)
    assert core.simulate_batch._cache_size() == size


@pytest.mark.parametrize(
    ("field", "value"),
    [("param", "sp"), ("width", 0), ("y", 0.0), ("kappa_max", 0.5), ("max_period", 12),
     ("window", 8), ("num_doublings", 9), ("period_tol", 2.0), ("trajectory_scales", (1.0,)),
     ("widths", (8, 0))],
)  # fmt: skip
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(uv_model.TINY, **{field: value})


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(uv_model, tiny, tmp_path)
