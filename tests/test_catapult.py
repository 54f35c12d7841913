"""The catapult study: the linear network's c_loss = 2 and c_max = 4, flatter minima, I/O."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from hessian_lab.population import member_keys
from hessian_lab.studies import _catapult_core as core
from hessian_lab.studies import catapult


@pytest.fixture(scope="module")
def tiny():
    return catapult.run(catapult.TINY)


def _spacing(config):
    return (config.uv_log2_c_max - config.uv_log2_c_min) / (config.uv_num_c - 1)


def test_linear_net_critical_values(tiny):
    cr = catapult.critical(tiny, "uv")
    h = _spacing(tiny.config)
    # every width and seed: within one grid spacing (in log2 c) of the theory
    assert np.all(np.abs(np.log2(cr["c_loss"] / 2.0)) <= h + 1e-12), cr["c_loss"]
    assert np.all(np.abs(np.log2(cr["c_max"] / 4.0)) <= h + 1e-12), cr["c_max"]


def test_catapult_ends_below_two_over_eta(tiny):
    cr = catapult.critical(tiny, "uv")
    c, div = tiny.uv_c, tiny.uv_diverged
    lazy = c < 2
    assert not np.any(cr["loss_ratio"][:, lazy] > 1)  # lazy: the loss never rises
    band = (c > 2) & (c < 4)
    assert np.all(cr["loss_ratio"][:, band] > 1) and not np.any(div[:, band])
    assert np.all(cr["final_x_lr"][:, band] < 2.0)  # flatter region, lambda_T < 2 / eta
    assert np.all(div[:, c > 4.01])  # above c_max: diverged, recorded, no exception
    assert np.all(cr["t_peak"][:, band] > 0)


def test_lambda0_is_the_exact_top_hessian_eigenvalue(tiny):
    # y = 0, one example x = 1: lambda_H = Theta/2 + sqrt(Theta^2/4 + 3 f^2 / n)
    n = int(tiny.uv_widths[0])
    prob = core.make_problem("uv", 1, n, 1, "ntp", "linear", "per_example",
                             str(jnp.result_type(float)))  # fmt: skip
    for s, seed in enumerate(tiny.config.seeds):
        p = prob.init(member_keys(seed)[0])
        u, v = np.asarray(p["u"])[:, 0], np.asarray(p["v"])
        f, theta = u @ v / np.sqrt(n), (u @ u + v @ v) / n
        exact = theta / 2 + np.sqrt(theta**2 / 4 + 3 * f**2 / n)
        np.testing.assert_allclose(tiny.uv_lambda0[0, s], exact, rtol=1e-8)


def test_eta_is_c_over_lambda0_per_seed(tiny):
    np.testing.assert_allclose(
        tiny.uv_eta, tiny.uv_c[None, :, None] / tiny.uv_lambda0[:, None, :], rtol=1e-12
    )


def test_save_load_round_trip(tiny, tmp_path):
    catapult.save(tiny, tmp_path / "run")
    back = catapult.load(tmp_path / "run")
    assert back.config == tiny.config
    for f in dataclasses.fields(catapult.Results):
        if f.name != "config":
            a, b = getattr(tiny, f.name), getattr(back, f.name)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_summary_and_figures(tiny):
    s = catapult.summary(tiny)
    assert s["uv_c_max"] == pytest.approx(4.0) and s["normalization"] == "per_example"
    figs = catapult.figures(tiny)
    assert set(figs) == {"catapult_trajectories", "catapult_regimes", "catapult_time"}
    assert all(isinstance(f, Figure) for f in figs.values())


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"uv_steps": 55}, "uv_steps"),
        ({"seeds": ()}, "seeds"),
        ({"normalization": "sum"}, "normalization"),
        ({"uv_log2_c_max": -2.0}, "uv_log2_c_max"),
        ({"mlp_param": "ntp"}, "mlp_param"),
        ({"divergence_loss": float("nan")}, "divergence_loss"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        catapult.Config(**kw)


def test_points_cover_families():
    pts = catapult.points(catapult.DEFAULT)
    assert [p["family"] for p in pts] == ["uv"] * 4 + ["mlp"] * 2
