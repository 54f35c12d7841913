"""The early-training phase diagram: critical values, ordering, one compile per cell, contract."""

import dataclasses

import numpy as np
import pytest
import study_contract

from hessian_lab.studies import early_phase_diagram as epd
from hessian_lab.studies import problems, stats

TRACES = {"n": 0}  # Python-level calls of the loss functions happen only while jax traces


def _counting(real, built):
    """``real`` whose problems count their loss traces; records (problem, count when built)."""

    def make(*args, **kwargs):
        prob = real(*args, **kwargs)

        def loss_fn(params, batch):
            TRACES["n"] += 1
            return prob.loss_fn(params, batch)

        built.append((prob._replace(loss_fn=loss_fn), TRACES["n"]))
        return built[-1][0]

    return make


@pytest.fixture(scope="module")
def tiny():
    built, runners = [], []

    class Runner(problems.CatapultRunner):  # records the runner each cell builds
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            runners.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(problems, "catapult_problem", _counting(problems.catapult_problem, built))
        mp.setattr(problems, "CatapultRunner", Runner)
        res = epd.run(epd.TINY)
    traces = np.diff([n for _, n in built] + [TRACES["n"]])  # per cell
    return res, traces, runners


def test_critical_values_ordered(tiny):
    res = tiny[0]
    cr = epd.critical(res)
    c_loss, c_sharp, c_max = (stats.nanmean(cr[k], axis=-1) for k in ("c_loss", "c_sharp", "c_max"))
    assert np.all(np.isfinite(c_loss)) and np.all(np.isfinite(c_max))
    assert np.all(c_loss <= c_sharp) and np.all(c_sharp <= c_max), (c_loss, c_sharp, c_max)
    assert np.all((c_loss >= 1.8) & (c_loss <= 4.0)), c_loss
    s = epd.summary(res)
    assert s["ordered"] and s["c_loss"]["d=1 w=64"] == pytest.approx(c_loss[0, 0])
    assert any(v.startswith("c_loss <= c_sharp <= c_max") and v.endswith(" reproduced")
               for v in epd.verdict(res))  # fmt: skip


def test_step_compiled_once_per_cell(tiny):
    res, traces, runners = tiny
    # every cell traces its programs (lambda0 and the population step) the same, fixed number of
    # times; its runner trained again with other c values and seeds (same counts) traces nothing:
    # learning rates and seeds are data, not constants
    assert len(traces) == len(runners) == len(res.config.depths) * len(res.config.widths)
    assert traces[0] > 0 and np.all(traces == traces[0])
    other = dataclasses.replace(epd.TINY, log2_c_min=0.3, log2_c_max=3.0, seeds=(7,))
    before = TRACES["n"]
    runs = runners[0].train(epd.c_grid(other), other.seeds, divergence_threshold=1e4)
    assert TRACES["n"] == before
    np.testing.assert_allclose(runs.eta, epd.c_grid(other)[:, None] / runs.lambda0[None, :])


def test_eta_per_member_and_flags(tiny):
    res = tiny[0]
    np.testing.assert_allclose(res.eta, res.c[None, None, :, None] / res.lambda0[:, :, None, :])
    cr = epd.critical(res)
    ok = ~res.diverged
    assert np.all(np.isfinite(res.line_ratio[ok]))
    # no loss catapult below c = 1 (lazy side of the diagram)
    assert not np.any(cr["loss_catapult"][:, :, res.c < 1.5])


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
    with pytest.raises(ValueError, match=f"^{field}:"):
        epd.Config(**kw)


def test_points_one_per_cell():
    cfg = epd.DEFAULT
    pts = epd.points(cfg)
    assert len(pts) == len(cfg.depths) * len(cfg.widths)
    assert pts[0] == {"depth": cfg.depths[0], "width": cfg.widths[0]}
    assert epd.PHASE_AXES == ("widths", "depths")


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(epd, tiny[0], tmp_path)
