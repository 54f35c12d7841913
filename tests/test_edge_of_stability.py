"""Edge of stability of full-batch GD (Cohen et al. 2021): TINY run, statistics, I/O, config."""

import dataclasses

import numpy as np
import pytest
import study_contract

from hessian_lab.studies import edge_of_stability as eos
from hessian_lab.studies import problems
from hessian_lab.studies import stats as c
from hessian_lab.studies.edge_of_stability_core import catapult_end


@pytest.fixture(scope="module")
def tiny():
    return eos.run(eos.TINY)


def test_tiny_progressive_sharpening_then_edge_of_stability(tiny):
    assert not np.any(tiny.diverged)
    np.testing.assert_array_equal(tiny.critical, 2.0)
    for i, eta in enumerate(tiny.lrs):
        # lambda_0 < 2/eta, then the sharpness rose until it first reached 2/eta ...
        assert tiny.sharpness0[i] < 2 / eta
        assert tiny.reach_step[i] > 0 and tiny.rose[i], (eta, tiny.reach_step[i])
        # ... and after that hovers at the edge of stability.
        assert 1.9 <= tiny.median_x_lr[i] <= 2.3, (eta, tiny.median_x_lr[i])
        assert tiny.long_decrease[i]


def test_tiny_cnn_reaches_the_edge_of_stability():
    # A CNN (8x8 digits, conv 2x8 tanh): lambda_0 < 2/eta, progressive sharpening to 2/eta,
    # then eta*lambda at 2 on the median (float64, as the tests run).
    r = eos.run(eos.TINY_CNN)
    assert r.config.arch == "cnn" and not r.diverged[0]
    assert r.sharpness0[0] < 2 / r.lrs[0] and r.reach_step[0] > 0 and r.rose[0]
    assert 1.9 <= r.median_x_lr[0] <= 2.2 and r.long_decrease[0], r.median_x_lr


def test_tiny_gradient_flow_keeps_sharpening(tiny):
    lam = tiny.flow_sharpness
    assert np.all(np.isfinite(lam)) and lam[-1] > lam.min()
    np.testing.assert_allclose(tiny.flow_time[1] - tiny.flow_time[0],
                               tiny.config.flow_step * tiny.config.sharpness_every)  # fmt: skip


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(eos, tiny, tmp_path)


def test_summary_and_verdict(tiny):
    s = eos.summary(tiny)
    assert s["threshold"]["GD eta=0.4"] == pytest.approx(5.0)
    assert s["rose"]["GD eta=0.4"] is True and s["num_diverged"] == 0
    assert set(eos.figures(tiny)) == {"edge_of_stability_dynamics", "edge_of_stability_flow"}
    lines = eos.verdict(tiny)
    assert all(line.endswith("- reproduced") for line in lines[:2]), lines
    assert "Cohen et al." in lines[0]


def test_a_diverged_run_is_counted_not_summarised(tiny):
    r = dataclasses.replace(
        tiny,
        diverged=np.array([False, True]),
        median_x_lr=np.array([2.0, np.nan]),
        diverged_step=np.array([-1, 5]),
    )
    s = eos.summary(r)
    assert s["num_diverged"] == 1 and np.isnan(s["median_x_lr"]["GD eta=0.4"])
    assert "diverged at step 5" in eos.verdict(r)[1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lrs", ()),
        ("lrs", (0.1, -0.2)),
        ("n_train", 0),
        ("n_train", 5000),
        ("activation", "sigmoid"),
        ("normalization", "mean"),
        ("flow_time", -1.0),
        ("short_window", 1000),
        ("cifar_path", ""),
        ("arch", "vgg"),
        ("downsample", 0),
        ("downsample", 2),  # the MLP takes the images as they are
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(eos.TINY, **{field: value})


def test_cifar_config_follows_cohen():
    cfg = eos.cifar_config("/data/cifar")
    assert (cfg.n_train, cfg.depth, cfg.width, cfg.activation) == (5000, 2, 200, "tanh")
    assert cfg.normalization == "per_example" and cfg.cifar_path == "/data/cifar"


def test_statistics_on_synthetic_curves():
    lam = np.full(100, np.nan)
    lam[::10] = [1.0, 1.2, 1.6, 2.05, 2.1, 1.95, 2.0, 2.05, 1.98, 2.02]
    t = c.first_reach(lam, 2.0)
    assert t == 30 and c.rose_before(lam, t)
    assert c.median_after(lam, t) == pytest.approx(2.02)
    assert not c.rose_before(np.array([2.5, 2.4]), 0)
    steps = np.arange(400)
    loss = np.exp(-steps / 200) * (1 + 0.05 * (steps % 2))  # falls, zig-zags every step
    assert c.loss_oscillation(loss, 0, long_window=100, short_window=10) == (True, True)
    assert c.loss_oscillation(np.exp(-steps / 200), 0, long_window=100) == (True, False)
    assert c.loss_oscillation(loss, -1, long_window=100) == (False, False)


def test_statistics_start_after_an_initial_catapult():
    # lambda_0 above 2/eta: the statistics start at the first measurement below it
    lam = np.full(60, np.nan)
    lam[::10] = [7.0, 1.5, 1.7, 2.1, 1.9, 2.05]
    assert catapult_end(lam, 2.0) == 10 and catapult_end(lam[10:], 2.0) == 0
    assert catapult_end(np.array([3.0, np.nan, 2.5]), 2.0) == 3  # never below: nothing left
    assert catapult_end(np.full(3, np.nan), 2.0) == 0


def test_new_learning_rates_reuse_the_compiled_program():
    # One runner holds one compiled step: populations with other learning rates, and the
    # gradient-flow run, trace it once.
    prob = eos.problem(eos.TINY)
    runner = problems.SharpnessRunner(prob, "gd", every=10, num_iters=4)
    runner.train([0.3], num_steps=30)
    size = runner.step.step.run._cache_size()
    assert size == 1
    r = runner.train([0.1, 0.2], num_steps=30, seed=3)
    runner.flow(time=1.5, step=0.05)  # 30 steps: the same chunk length
    assert runner.step.step.run._cache_size() == size
    assert r.loss.shape == (2, 30)
