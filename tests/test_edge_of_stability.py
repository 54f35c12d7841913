"""Edge of stability of full-batch GD (Cohen et al. 2021): TINY run, statistics, I/O, config."""

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from hessian_lab.studies import _common as c
from hessian_lab.studies import edge_of_stability as eos


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


def test_tiny_gradient_flow_keeps_sharpening(tiny):
    lam = tiny.flow_sharpness
    assert np.all(np.isfinite(lam)) and lam[-1] > lam.min()
    np.testing.assert_allclose(tiny.flow_time[1] - tiny.flow_time[0],
                               tiny.config.flow_step * tiny.config.sharpness_every)  # fmt: skip


def test_save_load_round_trip(tiny, tmp_path):
    eos.save(tiny, tmp_path / "run")
    back = eos.load(tmp_path / "run")
    assert back.config == tiny.config
    for f in dataclasses.fields(eos.Results):
        if f.name != "config":
            a, b = getattr(tiny, f.name), getattr(back, f.name)
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)


def test_figures_and_summary(tiny):
    figs = eos.figures(tiny)
    assert set(figs) == {"edge_of_stability_dynamics", "edge_of_stability_flow"}
    assert all(isinstance(f, Figure) for f in figs.values())
    s = eos.summary(tiny)
    assert s["gd_eta0.4_threshold"] == pytest.approx(5.0)
    assert isinstance(s["gd_eta0.4_rose"], bool)


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


def test_new_learning_rates_reuse_the_compiled_program(tiny):
    from hessian_lab import trainer

    before = trainer._run_chunk._cache_size()
    cfg = dataclasses.replace(eos.TINY, lrs=(0.3,), num_steps=200, flow_time=0.0)
    r = eos.run(cfg)
    assert trainer._run_chunk._cache_size() == before
    assert r.loss.shape == (1, 200) and r.flow_time.size == 0
