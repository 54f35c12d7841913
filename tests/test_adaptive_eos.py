"""The adaptive-EoS study: RMSProp / frozen preconditioners against optax, the TINY runs (MLP and
transformer: eta lambda(P^-1 H) against the closed-form threshold 38)."""

import functools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import study_contract

import hessian_lab as hl
from hessian_lab.optim import make_optimizer
from hessian_lab.studies import adaptive_eos as ae
from hessian_lab.studies import sweep


@pytest.fixture(scope="module")
def tiny():
    return ae.run(ae.TINY)


def _trees(seed, count):
    """``count`` small pytrees of float64 arrays (numpy draws: no compiles)."""
    rng = np.random.default_rng(seed)
    return [
        {"w": rng.standard_normal((3, 2)), "b": (rng.standard_normal(2),)} for _ in range(count)
    ]


def _assert_trees_close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


def test_tiny_adam_preconditioned_sharpness_plateaus_at_38(tiny):
    s, run = ae.summary(tiny), "Adam eta=0.02"
    assert ae.threshold(0.9) == pytest.approx(38.0)
    assert s["threshold"][run] == pytest.approx(38.0)
    assert not s["diverged"][run] and s["num_diverged"] == 0
    assert 32.3 <= s["late_median_x_lr"][run] <= 43.7
    assert 0 < s["plateau_step"][run] < 0.7 * ae.TINY.num_steps
    # the raw sharpness is nowhere near its own GD threshold 2/eta: nothing pins it
    assert s["late_sharpness"][run] * ae.TINY.adam_lrs[0] < 1.0
    assert ae.verdict(tiny)[0].endswith("- reproduced")


@pytest.fixture(scope="module")
def tiny_transformer():
    return ae.run(ae.TINY_TRANSFORMER)


def test_tiny_transformer_adam_plateaus_at_38_while_raw_sharpness_rises(tiny_transformer):
    r, c, run = tiny_transformer, ae.TINY_TRANSFORMER, "Adam eta=0.01"
    s = ae.summary(r)
    assert not s["diverged"][run] and s["num_diverged"] == 0
    # the statistic: median eta*lambda(P^-1 H) after first reaching the threshold
    k = ae.plateau_record(r, 0)
    assert 0 < r.record_steps[k] < 0.5 * c.num_steps
    after = np.median(c.adam_lrs[0] * r.adam_pre[0, k:])
    assert 0.85 * 38 <= after <= 1.15 * 38
    assert 0.85 * 38 <= s["late_median_x_lr"][run] <= 1.15 * 38
    # the raw sharpness is held by nothing: it keeps rising after the plateau began
    assert s["sharpness_rise_in_plateau"][run] > 2
    late = r.adam_sharp[0, ae.late(r)]
    assert np.median(late) > 2 * r.adam_sharp[0, k]
    # next-token cross-entropy falls from about log(vocab) (logits O(1) at initialisation)
    assert abs(r.adam_loss[0, 0] - np.log(c.vocab)) < 1.0 and r.adam_loss[0, -1] < np.log(3)
    assert all(line.endswith("- reproduced") for line in ae.verdict(r))


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(ae, tiny, tmp_path)


def test_a_diverged_run_is_counted_and_left_out(tiny):
    bad = ae.Results(**{**tiny.__dict__, "adam_diverged": np.array([True])})
    s = ae.summary(bad)
    assert s["num_diverged"] == 1 and s["diverged"]["Adam eta=0.02"]
    assert np.isnan(s["late_median_x_lr"]["Adam eta=0.02"])
    assert np.isnan(s["final_sharpness"]["Adam eta=0.02"])
    assert "diverged" in ae.verdict(bad)[0]


# One jitted program per test case instead of dozens of eagerly compiled optax ops.
@functools.partial(jax.jit, static_argnums=0)
def _after_updates(opt, params, grads):
    """Feed ``grads[:-1]`` to ``opt``; return the state and the update for ``grads[-1]``."""
    state = opt.init(params)
    for g in grads[:-1]:
        _, state = opt.update(g, state, params)
    return state, opt.update(grads[-1], state, params)[0]


@pytest.mark.parametrize("eps", [1e-8, 0.3])
def test_rmsprop_preconditioner_is_what_optax_applies(eps):
    lr, decay = 0.07, 0.8
    opt = make_optimizer("rmsprop", learning_rate=lr, decay=decay, eps=eps)
    params, *grads = _trees(0, 5)  # three gradients for a non-trivial nu, then g
    state, upd = _after_updates(opt, params, grads)
    g = grads[-1]
    p = jax.jit(functools.partial(hl.rmsprop_preconditioner, decay=decay, eps=eps))(state, g)
    _assert_trees_close(upd, jax.tree.map(lambda gi, pi: -lr * gi / np.asarray(pi), g, p))
    # the hyperparameters are read from make_optimizer's injected state when not given
    _assert_trees_close(p, hl.rmsprop_preconditioner(state, g))
    with pytest.raises(ValueError, match="ScaleByRmsState"):
        hl.rmsprop_preconditioner(optax.sgd(0.1).init(params), g)


def test_frozen_momentum_continues_adam_exactly():
    b1, b2, eps, lr = 0.9, 0.99, 1e-3, 0.05
    adam = make_optimizer("adam", learning_rate=lr, b1=b1, b2=b2, eps=eps)
    params, *grads = _trees(1, 6)
    state, want = _after_updates(adam, params, grads)
    frozen = optax.inject_hyperparams(ae.frozen_momentum)(learning_rate=lr, b1=b1)

    @jax.jit
    def frozen_update(state, g):
        start = ae.frozen_state(state, g, b1=b1, b2=b2, eps=eps)
        return frozen.update(g, frozen.init(params)._replace(inner_state=start), params)[0]

    _assert_trees_close(frozen_update(state, grads[-1]), want)


@jax.jit
def _frozen_quadratic(lr):
    h = jnp.array([4.0, 1.0, 0.25])
    p = jnp.array([2.0, 0.5, 1.0])  # P^-1 H = diag(2, 2, 0.25)
    opt = ae.frozen_momentum(lr, 0.9)

    def step(carry, _):
        x, s = carry
        u, s = opt.update(h * x, s)
        return (x + u, s), None

    (x, _), _ = jax.lax.scan(step, (jnp.ones(3), ae.FrozenState(jnp.zeros(3), p)), length=3000)
    return jnp.linalg.norm(x)


@pytest.mark.parametrize(("ratio", "stable"), [(0.95, True), (1.05, False)])
def test_frozen_momentum_threshold_on_a_quadratic(ratio, stable):
    lr = ratio * ae.threshold(0.9) / 2.0  # the top eigenvalue of P^-1 H is 2
    assert bool(_frozen_quadratic(jnp.asarray(lr)) < 1.0) == stable


@pytest.mark.parametrize(
    ("field", "value"),
    [("b1", 1.0), ("freeze_step", 15), ("adam_lrs", ()), ("normalization", "sum"), ("n", 0),
     ("late_fraction", 0.0), ("rmsprop_lrs", (-1.0,)), ("plateau_fraction", 1.5),
     ("arch", "cnn"), ("task", "copy"), ("vocab", 2), ("num_heads", 3), ("num_layers", 0),
     ("context", 0), ("n", 2000)],
)  # fmt: skip
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        ae.Config(**{field: value})


def test_the_transformer_takes_more_sequences_than_digits_has():
    assert ae.Config(arch="transformer", n=2000).n == 2000  # the 1797 cap is the MLP's digits
    with pytest.raises(ValueError, match=r"^num_iters"):
        ae.check_inputs(
            ae.Config(arch="transformer", vocab=3, d_model=2, num_heads=1, num_iters=999)
        )


def test_the_docs_transformer_command_runs_the_transformer_preset():
    docs = (Path(__file__).resolve().parents[1] / ae.DOCS).read_text().splitlines()
    line = next(s for s in docs if s.startswith("    hessian-lab") and "transformer" in s)
    preset = re.search(r"--preset (\S+)", line).group(1)
    assert sweep.preset(ae, preset) is ae.TRANSFORMER and "--set" not in line
