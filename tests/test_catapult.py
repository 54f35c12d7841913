"""The catapult study: the linear network's c_loss = 2 and c_max = 4, flatter minima, contract."""

import numpy as np
import pytest
import study_contract

from hessian_lab.population import member_keys
from hessian_lab.studies import catapult, problems


@pytest.fixture(scope="module")
def tiny():
    seen = []
    res = catapult.run(catapult.TINY, progress=lambda done, total: seen.append((done, total)))
    res.progress = seen  # not a Results field: save/load ignore it
    return res


def _spacing(config):
    return (config.uv_log2_c_max - config.uv_log2_c_min) / (config.uv_num_c - 1)


def test_linear_net_critical_values(tiny):
    cr = catapult.critical(tiny, "uv")
    h = _spacing(tiny.config)
    # every width and seed: within one grid spacing (in log2 c) of the theory
    assert np.all(np.abs(np.log2(cr["c_loss"] / 2.0)) <= h + 1e-12), cr["c_loss"]
    assert np.all(np.abs(np.log2(cr["c_max"] / 4.0)) <= h + 1e-12), cr["c_max"]
    s = catapult.summary(tiny)
    assert s["c_max_mean"]["linear net"] == pytest.approx(4.0)
    assert s["c_max"]["linear net width=256"] == pytest.approx(4.0)
    sentences = catapult.verdict(tiny)
    assert sentences[0].startswith("linear net: c_loss") and sentences[0].endswith("reproduced")
    assert sentences[1].startswith("linear net: c_max: 4 ") and sentences[1].endswith(" reproduced")


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
    s = catapult.summary(tiny)
    assert s["catapult_runs"]["linear net"] == s["band_runs"]["linear net"] == band.sum() * 2
    assert s["num_diverged"]["linear net"] == int(div.sum()) > 0
    assert s["catapult_final_x_lr_max"]["linear net"] < 2.0


def test_lambda0_is_the_exact_top_hessian_eigenvalue(tiny):
    # y = 0, one example x = 1: lambda_H = Theta/2 + sqrt(Theta^2/4 + 3 f^2 / n)
    n = int(tiny.uv_widths[0])
    prob = problems.catapult_problem("uv", width=n)
    for s, seed in enumerate(tiny.config.seeds):
        p = prob.model.init(member_keys(seed)[0])
        u, v = np.asarray(p["u"])[:, 0], np.asarray(p["v"])
        f, theta = u @ v / np.sqrt(n), (u @ u + v @ v) / n
        exact = theta / 2 + np.sqrt(theta**2 / 4 + 3 * f**2 / n)
        np.testing.assert_allclose(tiny.uv_lambda0[0, s], exact, rtol=1e-8)


def test_eta_is_c_over_lambda0_per_seed(tiny):
    np.testing.assert_allclose(
        tiny.uv_eta, tiny.uv_c[None, :, None] / tiny.uv_lambda0[:, None, :], rtol=1e-12
    )


def test_progress_counts_member_steps(tiny):
    cfg = tiny.config
    total = cfg.uv_num_c * len(cfg.seeds) * (cfg.uv_steps + 1)
    done = [d for d, t in tiny.progress]
    assert {t for _, t in tiny.progress} == {total} and done[-1] == total
    assert len(done) > 2 and np.all(np.diff(done) >= 0)  # advances per member, not per point


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"uv_steps": 55}, "uv_steps"),
        ({"seeds": ()}, "seeds"),
        ({"normalization": "sum"}, "normalization"),
        ({"uv_log2_c_max": -2.0}, "uv_log2_c_max"),
        ({"mlp_param": "ntp"}, "mlp_param"),
        ({"divergence_loss": float("nan")}, "divergence_loss"),
        ({"mlp_widths": (0,)}, "mlp_widths"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        catapult.Config(**kw)


def test_points_cover_families():
    pts = catapult.points(catapult.DEFAULT)
    assert [p["family"] for p in pts] == ["uv"] * 4 + ["mlp"] * 2


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(catapult, tiny, tmp_path)
