"""The warmup study: GI-Adam's preconditioned sharpness, the TINY run (SP warmup), the contract.

The catapult search against a closed-form 2/lambda0 is tested in tests/test_lr_search.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import study_contract
from jax.flatten_util import ravel_pytree

import hessian_lab as hl
from hessian_lab import models
from hessian_lab.losses import make_loss_fn
from hessian_lab.optim import gi_adam_init, make_optimizer
from hessian_lab.studies import warmup, warmup_core

PROGRESS = []


@pytest.fixture(scope="module")
def tiny():
    return warmup.run(warmup.TINY, progress=lambda d, t: PROGRESS.append((d, t)))


def _precond_sharpness_fn(loss_fn, num_iters, b1, b2):
    """Jitted ``f(params, opt_state, data, eps, key)``: lambda_max(P^-1 H) at an Adam state."""

    @jax.jit
    def f(params, opt_state, data, eps, key):
        grads = jax.grad(loss_fn)(params, data)
        p = hl.adam_preconditioner(opt_state, grads, b1=b1, b2=b2, eps=eps)
        v0 = hl.tree.normalize(hl.tree.random_like(key, params))
        mv = hl.full_data_hvp(loss_fn, params, data, chunk_size=data[0].shape[0])
        return hl.preconditioned_sharpness(mv, p, v0, k=1, num_iters=num_iters).values[0]

    return f


def _dense_top(loss_fn, params, data):
    flat, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), data)))(flat)
    return float(jnp.linalg.eigvalsh(hess)[-1]), hess


B2 = 0.99


@pytest.fixture(scope="module")
def gi():
    """One small tanh MLP (no zero gradients) and ONE jitted P^-1 H estimator (eps is an argument)."""
    net = models.mlp(5, 3, depth=1, width=6, activation="tanh")
    loss_fn = make_loss_fn(net.apply, "mse")
    x = jax.random.normal(jax.random.key(1), (12, 5))
    y = jax.random.normal(jax.random.key(2), (12, 3))
    p = net.init(jax.random.key(0))
    opt = make_optimizer("adam", learning_rate=1e-3, b2=B2)
    g0 = jax.jit(jax.grad(loss_fn))(p, (x, y))
    states = (opt.init(p), gi_adam_init(opt.init(p), g0))
    f = _precond_sharpness_fn(loss_fn, 40, 0.9, B2)
    return loss_fn, p, (x, y), g0, states, f


def test_gi_adam_preconditioned_sharpness_ratio_exact_at_eps0(gi):
    # Adam:    v1 = (1-b2) g^2, v1/(1-b2) = g^2          -> P = (1-b1)(|g| + eps)
    # GI-Adam: v1 = b2 g^2 + (1-b2) g^2 = g^2            -> P = (1-b1)(|g|/sqrt(1-b2) + eps)
    # eps = 0: P_GI = P_Adam / sqrt(1-b2) exactly, so lambda(P^-1 H) shrinks by sqrt(1-b2).
    _, p, data, g0, states, f = gi
    assert all(bool(jnp.all(g != 0)) for g in jax.tree.leaves(g0))
    adam, gia = (float(f(p, st, data, 0.0, jax.random.key(0))) for st in states)
    np.testing.assert_allclose(adam / gia, 1 / np.sqrt(1 - B2), rtol=1e-10)


def test_gi_adam_ratio_with_eps_matches_dense_and_bounds(gi):
    eps = 1e-2  # large enough to matter: per coordinate r_i = (|g_i|/s + eps) / (|g_i| + eps)
    loss_fn, p, data, g0, states, f = gi
    s = np.sqrt(1 - B2)
    _, hess = _dense_top(loss_fn, p, data)
    g = np.abs(ravel_pytree(g0)[0])
    dense = []
    for scale in (1.0, 1 / s):
        pinv = 1 / np.sqrt(0.1 * (g * scale + eps))
        dense.append(np.linalg.eigvalsh(pinv[:, None] * np.asarray(hess) * pinv[None, :])[-1])
    got = [float(f(p, st, data, eps, jax.random.key(0))) for st in states]
    np.testing.assert_allclose(got, dense, rtol=1e-6)
    r = (g / s + eps) / (g + eps)
    ratio = got[0] / got[1]
    assert r.min() - 1e-9 <= ratio <= r.max() + 1e-9  # Rayleigh-quotient bound
    assert 1.0 < ratio < 1 / s


def test_library_gi_adam_matches_adam_from_gi_init(gi):
    loss_fn, p, data, g0, _, _ = gi
    a = make_optimizer("adam", learning_rate=1e-2)
    b = make_optimizer("gi_adam", learning_rate=1e-2)

    @jax.jit  # one compile instead of many slow eager dispatches
    def three_steps(p):
        sa, sb = gi_adam_init(a.init(p), g0), b.init(p)
        pa = pb = p
        for _ in range(3):
            ua, sa = a.update(jax.grad(loss_fn)(pa, data), sa, pa)
            ub, sb = b.update(jax.grad(loss_fn)(pb, data), sb, pb)
            pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
        return pa, pb

    pa, pb = three_steps(p)
    for u, v in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-12)


def test_tiny_sp_sharpness_reduction_and_tracking(tiny):
    m = tiny.config.params.index("sp")
    s = tiny.traj_sharpness[m, 0]
    ok = np.isfinite(s)
    assert s[ok][-1] < 0.5 * tiny.lam0[m, 0]  # natural sharpness reduction
    eta_lam = (s * tiny.traj_lr[m, 0])[ok][-1]
    assert 1.0 < eta_lam < 4.0  # hovers near the stability edge 2/eta_t


def test_tiny_gi_ratio_and_results(tiny):
    sm = warmup.summary(tiny)
    assert abs(sm["gi_adam_precond_ratio"] / sm["expected_ratio"] - 1) < 0.05
    assert np.all(tiny.search_estimate > 0)
    assert np.all(tiny.search_estimate[..., 0] >= tiny.search_estimate[..., -1])  # k=1 is highest
    assert tiny.trainable.shape == tiny.diverged.shape
    # the trainability sweep: a member is trainable only if it did not diverge
    assert not np.any(tiny.trainable & tiny.diverged)
    assert sm["num_diverged"]["SP trainability"] == int(tiny.diverged.sum())


def test_tiny_progress_counts_every_step(tiny):
    done = [d for d, _ in PROGRESS]
    assert done == sorted(done) and PROGRESS[-1] == (warmup_core.total_steps(tiny.config),) * 2


def test_contract(tiny, tmp_path):
    study_contract.check_dynamic(warmup, tiny, tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 0), ("params", ("ntk",)), ("mup_bias", 1), ("c_max", 0.5), ("search_steps", (40,)), ("b2", 1.0),
     ("normalization", "mean"), ("trainable_fraction", 1.5)],
)  # fmt: skip
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(warmup.TINY, **{field: value})
