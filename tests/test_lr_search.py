"""catapult_search: converges to 2/lambda0 from above on linear regression, compiles once, checks input."""

import math

import jax
import numpy as np
import pytest

from hessian_lab import models, optim, trainer
from hessian_lab.losses import make_loss_fn
from hessian_lab.lr_search import CatapultSearchResult, catapult_search

_NET = models.mlp(20, 1, depth=0, width=1, bias=False)
_LOSS = make_loss_fn(_NET.apply, "mse")  # 0.5 mean_i (f_i - y_i)^2: H = X^T X / n exactly
_GD = optim.make_optimizer("gd", learning_rate=1.0)
_STEP = trainer.make_step(_LOSS, _GD, chunk_size=32)


def _regression():
    rng = np.random.default_rng(0)
    n, d = 64, 20
    x, y = rng.standard_normal((n, d)), rng.standard_normal((n, 1))
    lam0 = np.linalg.eigvalsh(x.T @ x / n)[-1]  # closed form: the loss is quadratic
    return _NET.init(jax.random.key(0)), (x, y), lam0


def test_linear_regression_converges_to_2_over_lambda0_and_traces_once():
    params, data, lam0 = _regression()
    crit = 2 / lam0
    traces = [0]

    def loss_fn(p, b):
        traces[0] += 1  # runs only while tracing
        return _LOSS(p, b)

    step = trainer.make_step(loss_fn, _GD, chunk_size=32)
    res = {}
    for k in (1, 3, 20):
        res[k] = catapult_search(step, params, data, num_steps=k, bisect_iters=6)
        if k == 1:
            after_first = traces[0]
    assert after_first > 0 and traces[0] == after_first  # one compiled program for all searches
    est = [res[k].eta for k in (1, 3, 20)]
    assert est[0] > 1.2 * crit  # a single step overestimates
    assert est[0] > est[1] > est[2] >= 0.99 * crit  # more steps converge from above
    assert abs(est[2] / crit - 1) < 0.2
    r = res[20]
    assert isinstance(r, CatapultSearchResult)
    assert r.eta_stable < r.eta <= r.eta_stable * 2.0 ** (2.0**-6) * (1 + 1e-12)
    assert r.num_trials == r.etas.size == r.rose.size
    assert r.rose[np.flatnonzero(r.etas == r.eta)[0]] and not r.rose[r.etas == r.eta_stable].any()
    assert 0 < r.num_updates <= 20 * r.num_trials
    np.testing.assert_allclose(r.loss0, float(_LOSS(params, data)), rtol=1e-12)


def test_starting_above_the_critical_rate_searches_downwards():
    params, data, lam0 = _regression()
    r = catapult_search(_STEP, params, data, num_steps=20, eta_min=100 / lam0)
    assert r.rose[0] and abs(r.eta * lam0 / 2 - 1) < 0.2


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_steps": 32}, "num_steps"),  # must be < chunk_size
        ({"eta_min": -1.0}, "eta_min"),
        ({"eta_min": math.inf}, "eta_min"),
        ({"growth": 1.0}, "growth"),
        ({"bisect_iters": -1}, "bisect_iters"),
        ({"max_trials": 0}, "max_trials"),
        ({"rtol": -0.1}, "rtol"),
        ({"step": trainer.make_step(_LOSS, _GD, chunk_size=1)}, "chunk_size"),
        ({"step": trainer.make_step(_LOSS, _GD, batch_size=8)}, "step: must be full batch"),
        ({"step": _LOSS}, "step"),
    ],
)
def test_bad_options_raise_naming_them(kw, name):
    params, data, _ = _regression()
    with pytest.raises(ValueError, match=name):
        catapult_search(kw.pop("step", _STEP), params, data, **kw)


def test_non_finite_initial_loss_and_no_bracket_raise():
    params, data, _ = _regression()
    x, y = data
    with pytest.raises(ValueError, match="data: leaf"):
        catapult_search(_STEP, params, (x, np.full_like(y, np.nan)), num_steps=5)
    with pytest.raises(ValueError, match="max_trials"):
        catapult_search(_STEP, params, data, num_steps=5, eta_min=1e-9, max_trials=3)
