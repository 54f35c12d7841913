"""Edge of stability with momentum: optax thresholds from the companion matrix, TINY run, I/O."""

import dataclasses

import numpy as np
import pytest
import study_contract

from hessian_lab.studies import momentum
from hessian_lab.studies import stats as c


@pytest.fixture(scope="module")
def tiny():
    return momentum.run(momentum.TINY)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov"])
def test_threshold_is_the_companion_matrix_spectral_radius_one(optimizer, beta):
    # The 2x2 iteration matrix on (x, v) for L = lambda x^2 / 2, optax's update order.
    def spectral_radius(h):  # h = eta * lambda
        if optimizer == "momentum":  # v' = b v + l x; x' = x - eta v'
            m = np.array([[1 - h, -h * beta], [1.0, beta]])
        else:  # v' = b v + l x; x' = x - eta (b v' + l x)
            m = np.array([[1 - h * (1 + beta), -h * beta**2], [1.0, beta]])
        return np.max(np.abs(np.linalg.eigvals(m)))

    thr = c.stability_threshold(optimizer, beta)
    assert spectral_radius(0.999 * thr) < 1 < spectral_radius(1.001 * thr)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov"])
def test_threshold_with_optax_on_a_quadratic(optimizer, beta):
    thr = c.stability_threshold(optimizer, beta)
    below = momentum.quadratic_orbit(optimizer, 0.97 * thr, beta, 1500)
    above = momentum.quadratic_orbit(optimizer, 1.03 * thr, beta, 1500)
    assert abs(below[-1]) < 1e-3
    assert abs(above[-1]) > 1e3 or not np.isfinite(above[-1])


def test_closed_forms():
    assert c.stability_threshold("gd") == 2.0
    assert c.stability_threshold("momentum", 0.9) == pytest.approx(3.8)
    assert c.stability_threshold("nesterov", 0.9) == pytest.approx(3.8 / 2.8)
    with pytest.raises(ValueError, match="optimizer"):
        c.stability_threshold("adam")
    with pytest.raises(ValueError, match="momentum"):
        c.stability_threshold("momentum", 1.0)


def test_tiny_heavy_ball_hovers_at_its_threshold(tiny):
    beta = tiny.config.momentum
    assert beta == 0.9 and not np.any(tiny.diverged)
    for i, eta in enumerate(tiny.lrs):
        assert tiny.optimizers[i] == "momentum"
        assert tiny.critical[i] == pytest.approx(2 + 2 * beta)
        assert tiny.sharpness0[i] < (2 + 2 * beta) / eta
        assert tiny.reach_step[i] > 0 and tiny.rose[i]
        ratio = tiny.median_x_lr[i] / (2 + 2 * beta)
        assert 0.85 <= ratio <= 1.15, (eta, ratio)


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(momentum, tiny, tmp_path)
    assert set(momentum.figures(tiny)) == {"momentum_dynamics"}
    assert momentum.summary(tiny)["heavy_ball_threshold_x_lr"] == pytest.approx(3.8)
    assert "heavy ball eta=0.45 beta=0.9" in momentum.summary(tiny)["median_x_lr"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("momentum", 1.0), ("momentum", -0.1), ("nesterov_lrs", (0.1, 0.0)), ("lrs", ())],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(momentum.TINY, **{field: value})
