"""The critical-sharpness study: TINY reproduces lambda_c -> lambda_max at GD's edge of stability
(lambda_max itself at 2/eta there, the closed-form GD threshold), the kit's contract, and bad
configs refused by field. The estimators themselves are tested against closed forms and dense
references in test_critical.py and test_estimators.py."""

import numpy as np
import pytest
import study_contract

from hessian_lab.studies import critical_sharpness as cs


@pytest.fixture(scope="module")
def tiny():
    return cs.run(cs.TINY)


def test_tiny_reaches_the_edge_with_lambda_c_near_lambda_max(tiny, tmp_path):
    r = tiny
    assert not r.diverged.any() and r.reach_step[0] > 0
    # the measured lambda_max sits at 2/eta after reaching it (the edge of stability)...
    at_edge = r.sharpness[0][r.steps >= r.reach_step[0]]
    assert np.median(at_edge) * r.lrs[0] == pytest.approx(2.0, rel=0.1)
    # ... and lambda_c within the study's 10% of it, cheaper: a few forward passes each
    assert abs(r.edge_ratio[0] - 1) <= cs.EDGE_TOLERANCE
    assert np.nanmean(r.num_evals[0]) <= r.config.max_evals
    assert np.all(r.critical_sharpness[0] <= r.sharpness[0] * 1.05 + 1e-9)
    assert cs.verdict(r)[0].split(";")[0].endswith("reproduced")
    # GD below the edge removes the gradient's high-curvature part; at the edge the gradient
    # lives in the top eigenspace (Gur-Ari et al.'s tiny subspace)
    s = cs.summary(r)
    assert s["alignment_before"]["GD eta=0.4"] < 0.01
    assert s["alignment_edge"]["GD eta=0.4"] > 0.8
    study_contract.check_dynamic(cs, r, tmp_path)


def test_bad_configs_are_refused_by_field():
    for kw, field in (
        ({"gd_lrs": (), "momentum_lrs": ()}, "gd_lrs"),
        ({"beta": 1.0}, "beta"),
        ({"max_evals": 1}, "max_evals"),
        ({"every": 0}, "every"),
        ({"gd_lrs": (float("nan"),)}, "gd_lrs"),
        ({"alignment_k": 20, "alignment_iters": 10}, "alignment_iters"),
        ({"alignment_every": 15}, "alignment_every"),
    ):
        with pytest.raises(ValueError, match=f"^{field}"):
            cs.Config(**kw)
    with pytest.raises(ValueError, match=r"^lanczos_iters"):
        cs.check_inputs(cs.Config(width=1, depth=1, lanczos_iters=10**6))
