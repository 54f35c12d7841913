"""The early-training phase diagram: critical values, ordering, one compile per cell, I/O."""

import dataclasses
import functools

import numpy as np
import pytest
from matplotlib.figure import Figure

from hessian_lab.studies import _catapult_core as core
from hessian_lab.studies import early_phase_diagram as epd

TRACES = {"n": 0}  # Python-level calls of the loss functions happen only while jax traces


def _counting(real):
    @functools.lru_cache(maxsize=32)
    def make(*args):
        prob = real(*args)

        def loss_fn(params, batch):
            TRACES["n"] += 1
            return prob.loss_fn(params, batch)

        return prob._replace(loss_fn=loss_fn)

    return make


@pytest.fixture(scope="module")
def tiny():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(core, "make_problem", _counting(core.make_problem))
        counts = []
        res = epd.run(epd.TINY, progress=lambda done, total: counts.append(TRACES["n"]))
        traces = np.diff([0, *counts])
        # rerun a cell: same compiled programs, no new trace
        before = TRACES["n"]
        again = epd.run_point(epd.TINY, epd.points(epd.TINY)[0])
        # other c values and seeds (same counts): learning rates and seeds are data, not constants
        other = dataclasses.replace(epd.TINY, log2_c_min=0.3, log2_c_max=3.0, seeds=(7,))
        epd.run_point(other, epd.points(other)[1])
        retraces = TRACES["n"] - before
    return res, traces, again, retraces


def test_critical_values_ordered(tiny):
    res = tiny[0]
    cr = epd.critical(res)
    c_loss, c_sharp, c_max = (core.nanmean(cr[k], axis=-1) for k in ("c_loss", "c_sharp", "c_max"))
    assert np.all(np.isfinite(c_loss)) and np.all(np.isfinite(c_max))
    assert np.all(c_loss <= c_sharp) and np.all(c_sharp <= c_max), (c_loss, c_sharp, c_max)
    assert np.all((c_loss >= 1.8) & (c_loss <= 4.0)), c_loss
    assert epd.summary(res)["ordering_c_loss_le_c_sharp_le_c_max"]


def test_step_compiled_once_per_cell(tiny):
    res, traces, again, retraces = tiny
    # every cell traces its programs (lambda0 and the population step) the same, fixed number
    # of times, whatever the number of (c, seed) members; a rerun of a cell traces nothing
    assert len(traces) == len(res.config.depths) * len(res.config.widths)
    assert traces[0] > 0 and np.all(traces == traces[0])
    assert retraces == 0
    np.testing.assert_array_equal(again["loss"], res.loss[0, 0])  # run == assemble(points)


def test_eta_per_member_and_flags(tiny):
    res = tiny[0]
    np.testing.assert_allclose(res.eta, res.c[None, None, :, None] / res.lambda0[:, :, None, :])
    cr = epd.critical(res)
    ok = ~res.diverged
    assert np.all(np.isfinite(res.line_ratio[ok]))
    # no loss catapult below c = 1 (lazy side of the diagram)
    assert not np.any(cr["loss_catapult"][:, :, res.c < 1.5])


def test_save_load_round_trip(tiny, tmp_path):
    res = tiny[0]
    epd.save(res, tmp_path / "run")
    back = epd.load(tmp_path / "run")
    assert back.config == res.config
    for f in dataclasses.fields(epd.Results):
        if f.name != "config":
            a, b = getattr(res, f.name), getattr(back, f.name)
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_figures(tiny):
    figs = epd.figures(tiny[0])
    assert set(figs) == {"early_phase_diagram_phases", "early_phase_diagram_sharpness"}
    assert all(isinstance(f, Figure) for f in figs.values())


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"arch": "rnn"}, "arch"),
        ({"depths": ()}, "depths"),
        ({"sharp_threshold": 0.5}, "sharp_threshold"),
        ({"sharpness_every": 3}, "sharpness_every"),
        ({"n": 5000}, "n"),
        ({"normalization": "mean"}, "normalization"),
        ({"widths": (16, 16)}, "widths"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        epd.Config(**kw)


def test_points_one_per_cell():
    cfg = epd.DEFAULT
    pts = epd.points(cfg)
    assert len(pts) == len(cfg.depths) * len(cfg.widths)
    assert pts[0] == {"depth": cfg.depths[0], "width": cfg.widths[0]}
