"""The stochastic-EoS study: threshold formulas against dense references, the TINY run."""

import dataclasses

import numpy as np
import pytest
import study_contract

from hessian_lab.studies import stochastic_eos as se


@pytest.fixture(scope="module")
def tiny():
    return se.run(se.TINY)


def test_tiny_sgd_b1_diverges_at_2_over_ntk_trace(tiny):
    s = se.summary(tiny)
    assert tiny.config.lin_batch_sizes == (1,)
    assert 0.85 <= s["lin_ratio_trace"]["B=1"] <= 1.15  # eta_div vs 2B / tr(NTK)
    assert s["lin_eta_div"]["B=1"] <= s["lin_2_over_lmax"] / 5  # far below the GD threshold
    assert s["lin_seeds_without_divergence"]["B=1"] == 0
    assert se.verdict(tiny)[0].endswith("- reproduced")
    # every seed diverges on the grid, and no member below the prediction's 0.85 diverged
    assert np.all(np.isfinite(tiny.lin_eta_div))
    low = tiny.lin_grid[0] < 0.85 * tiny.lin_pred_trace[0]
    assert not tiny.lin_diverged[0][low].any()


def _dense_rho(x, batch_size, eta):
    """Spectral radius of the second-moment map S -> E[(I - eta H_b) S (I - eta H_b)], dense."""
    n, d = x.shape
    c = (n - batch_size) / (batch_size * (n - 1))
    h = x.T @ x / n
    cols = []
    for k in range(d * d):
        s = np.zeros(d * d)
        s[k] = 1.0
        s = s.reshape(d, d)
        a = sum(np.outer(v, v) @ s @ np.outer(v, v) for v in x) / n
        m = s - eta * (h @ s + s @ h) + eta**2 * ((1 - c) * h @ s @ h + c * a)
        cols.append(m.ravel())
    return np.max(np.abs(np.linalg.eigvals(np.array(cols).T)))


@pytest.mark.parametrize("batch_size", [1, 3, 24])
def test_second_moment_threshold_matches_dense_spectral_radius(batch_size):
    x = np.random.default_rng(1).normal(size=(24, 4)) / 2.0
    eta = se.second_moment_threshold(x, batch_size)
    assert _dense_rho(x, batch_size, 0.99 * eta) < 1 < _dense_rho(x, batch_size, 1.01 * eta)
    if batch_size == 24:  # full batch: GD
        assert eta == pytest.approx(2 / np.linalg.eigvalsh(x.T @ x / 24)[-1], rel=1e-8)


def test_noise_kernel_threshold_limits():
    lam = np.array([1.0, 0.5, 0.1])
    assert se.noise_kernel_threshold(lam, 10, 10) == pytest.approx(2.0)  # B = n: GD
    tiny_lam = 1e-3 * np.ones(100)  # eta lambda << 2: eta ~ 2 B / tr
    eta = se.noise_kernel_threshold(tiny_lam, 2, 10**6)
    assert eta == pytest.approx(2 * 2 / tiny_lam.sum(), rel=0.05)
    c = (10**6 - 2) / (2 * (10**6 - 1))
    assert eta * c * np.sum(tiny_lam / (2 - eta * tiny_lam)) == pytest.approx(1.0)


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(se, tiny, tmp_path)


def test_points():
    assert se.points(se.DEFAULT)[0] == {"part": "linear", "batch_size": 1}
    assert len(se.points(se.DEFAULT)) == 8 + 4


def test_diverged_mlp_members_are_counted_and_left_out(tiny):
    # two batch sizes, two members each; member 1 at B=1 diverged (its curve is NaN after step 0)
    sharp = np.array([[[10.0, 11.0], [10.0, np.nan]], [[10.0, 8.0], [10.0, 6.0]]])
    trace = np.full((2, 2, 2), 400.0)
    r = dataclasses.replace(
        tiny,
        config=dataclasses.replace(tiny.config, mlp_batch_sizes=(1, 4), mlp_seeds=2),
        mlp_batch_sizes=np.array([1, 4]),
        mlp_record_steps=np.array([0, 50]),
        mlp_sharpness=sharp,
        mlp_ntk_trace=trace,
        mlp_full_loss=np.ones((2, 2, 2)),
        mlp_batch_sharpness=sharp * 1.5,
        mlp_diverged=np.array([[False, True], [False, False]]),
    )
    s, eta = se.summary(r), r.config.mlp_lr
    assert s["mlp_num_diverged"] == {"B=1": 1, "B=4": 0}
    assert s["mlp_sharpness_x_lr_final"]["B=1"] == pytest.approx(eta * 11.0)  # member 0 only
    assert s["mlp_sharpness_x_lr_final"]["B=4"] == pytest.approx(eta * 7.0)
    c1 = 1.0  # c_B at B = 1: (n - 1) / (n - 1)
    assert s["mlp_noise_kernel_at_init"]["B=1"] == pytest.approx(eta * c1 * 400.0 / 20)
    # the last quarter of the records (steps 0, 50) is the record at step 50
    assert s["mlp_batch_sharpness_x_lr"]["B=4"] == pytest.approx(eta * 1.5 * 7.0)
    assert s["mlp_sharpness_x_lr_late"]["B=1"] == pytest.approx(eta * 11.0)
    everyone = dataclasses.replace(r, mlp_diverged=np.ones((2, 2), bool))
    assert np.isnan(se.summary(everyone)["mlp_sharpness_x_lr_final"]["B=4"])


def test_window_mean_averages_each_window_and_skips_off_cadence_nans():
    v = np.array([[1.0, np.nan, 3.0, np.nan, 5.0, np.nan, np.nan]])  # every=2 cadence, 7 steps
    got = se.core.window_mean(v, 3)  # windows [0,3), [3,6), [6,7)
    np.testing.assert_array_equal(got, [[2.0, 5.0, np.nan]])


@pytest.mark.parametrize(
    ("field", "value"),
    [("lin_batch_sizes", (0,)), ("lin_batch_sizes", (512,)), ("mlp_batch_sizes", (1000,)),
     ("blowup", 1.0), ("grid_hi", -2.0), ("normalization", "mean"), ("mlp_lr", 0.0),
     ("batch_sharpness_every", 0), ("batch_sharpness_every", 100)],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        se.Config(**{field: value})
