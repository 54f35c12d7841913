"""Populations: a vmapped population equals separate runs, divergence is per member."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hessian_lab import losses, models, optim, population, trainer
from hessian_lab.callbacks import grad_norm

NET = models.mlp(4, 2, depth=1, width=8, activation="tanh")
LOSS = losses.make_loss_fn(NET.apply, "mse")
DATA = (
    jax.random.normal(jax.random.key(1), (24, 4)),
    jax.random.normal(jax.random.key(2), (24, 2)),
)
OPT = optim.make_optimizer("gd", learning_rate=0.1)
CBS = (grad_norm(every=4),)
# Four stable rates and four that diverge (the largest within a few steps).
LRS = np.array([0.05, 0.2, 0.5, 1.0, 8.0, 15.0, 30.0, 60.0])
SEEDS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
KW = dict(num_steps=20, divergence_threshold=1e3)


@pytest.fixture(scope="module")
def pop():
    pstep = population.make_step(LOSS, OPT, mode="vmap", callbacks=CBS, chunk_size=8)
    return population.train_population(pstep, NET.init, DATA, learning_rates=LRS, seeds=SEEDS, **KW)


def test_population_equals_separate_runs(pop):
    assert pop.metrics["loss"].shape == (8, 20)
    assert pop.diverged[:4].sum() == 0 and pop.diverged[4:].all()
    step = trainer.make_step(LOSS, OPT, callbacks=CBS, chunk_size=8)
    for p in range(8):
        init_key, data_key = population.member_keys(int(SEEDS[p]))
        r = trainer.train(
            step,
            NET.init(init_key),
            DATA,
            key=data_key,
            hyperparams={"learning_rate": LRS[p]},
            **KW,
        )
        assert r.history.diverged_step == pop.diverged_step[p]
        for k in ("loss", "grad_norm", "learning_rate"):
            T = len(r.history[k])
            np.testing.assert_allclose(pop.metrics[k][p, :T], r.history[k], rtol=1e-10)
            assert np.isnan(pop.metrics[k][p, T:]).all()
        jax.tree.map(
            lambda a, b, p=p: np.testing.assert_allclose(a[p], b, rtol=1e-10), pop.params, r.params
        )


def test_diverged_members_do_not_poison_others(pop):
    for leaf in jax.tree.leaves(pop.params):
        assert np.isfinite(np.asarray(leaf)).all()
    stable = pop.metrics["loss"][:4]
    assert np.isfinite(stable).all()
    assert list(pop.stop_reason[:4]) == ["num_steps"] * 4


def test_loop_mode_equals_vmap_mode_and_compiles_once(pop):
    count = [0]

    def loss_fn(p, b):
        count[0] += 1
        return LOSS(p, b)

    pstep = population.make_step(loss_fn, OPT, mode="loop", callbacks=CBS, chunk_size=8)
    seen = []
    loop = population.train_population(
        pstep, NET.init, DATA, learning_rates=LRS, seeds=SEEDS,
        progress=lambda d, t: seen.append((d, t)), **KW,
    )  # fmt: skip
    np.testing.assert_array_equal(loop.diverged_step, pop.diverged_step)
    np.testing.assert_allclose(loop.metrics["loss"], pop.metrics["loss"], rtol=1e-10)
    # member-steps: monotone, every member ends at a multiple of num_steps, ending at P * T
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] == 8 * 20 and {t for _, t in seen} == {8 * 20}
    assert all(20 * (p + 1) in done for p in range(8))
    first = count[0]
    population.train_population(pstep, NET.init, DATA, learning_rates=LRS[::-1], seeds=SEEDS, **KW)
    assert first > 0 and count[0] == first


def test_vmap_population_traces_once_across_sweeps():
    count = [0]

    def loss_fn(p, b):
        count[0] += 1
        return LOSS(p, b)

    pstep = population.make_step(loss_fn, OPT, mode="vmap", chunk_size=2)
    kw = dict(num_steps=4, hyperparams={"eta_init": 0.01})
    seen = []
    population.train_population(
        pstep, NET.init, DATA, learning_rates=LRS[:4], seeds=SEEDS[:4],
        progress=lambda d, t: seen.append((d, t)), **kw,
    )  # fmt: skip
    assert seen == [(8, 16), (16, 16)]  # member-steps, one report per chunk of 2 steps
    first = count[0]
    population.train_population(
        pstep, NET.init, DATA, learning_rates=LRS[4:], seeds=SEEDS[4:], **kw
    )
    assert first > 0 and count[0] == first


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"learning_rates": np.ones(3), "seeds": np.zeros(2, int)}, "seeds"),
        ({"learning_rates": np.ones((2, 2)), "seeds": np.zeros(4, int)}, "learning_rates"),
        ({"learning_rates": np.array([0.1, -1.0]), "seeds": np.zeros(2, int)}, "learning_rates"),
        ({"learning_rates": np.ones(2), "seeds": np.zeros(2)}, "seeds"),
        ({"learning_rates": np.ones(2), "seeds": np.zeros(2, int), "num_steps": 0}, "num_steps"),
    ],
)
def test_bad_input(kw, match):
    pstep = population.make_step(LOSS, OPT, mode="loop")
    with pytest.raises(ValueError, match=match):
        population.train_population(pstep, NET.init, DATA, **({"num_steps": 2} | kw))
    with pytest.raises(ValueError, match="mode"):
        population.make_step(LOSS, OPT, mode="pmap")


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_continuing_from_a_result_equals_one_longer_run(mode):
    # Adam: the continued run must carry its moments and step count, not restart them.
    opt = optim.make_optimizer("adam", learning_rate=0.01)
    pstep = population.make_step(LOSS, opt, mode=mode, chunk_size=5)
    kw = dict(learning_rates=LRS[:3], seeds=SEEDS[:3])
    full = population.train_population(pstep, NET.init, DATA, num_steps=12, **kw)
    first = population.train_population(pstep, NET.init, DATA, num_steps=7, **kw)
    rest = population.train_population(
        pstep, None, DATA, num_steps=5, params=first.params, opt_state=first.opt_state, **kw
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12),
        rest.params,
        full.params,
    )
    np.testing.assert_allclose(rest.metrics["loss"], full.metrics["loss"][:, 7:], rtol=1e-10)


def test_linearized_curvature_callbacks_in_vmapped_and_looped_populations():
    # jax.linearize inside lax.cond inside vmap: same numbers as the recomputing operator.
    from hessian_lab.callbacks import sharpness, spectral_density

    grid = jnp.linspace(-1.0, 3.0, 5)
    got = {}
    # The recomputing operator in a looped population is the reference (loop == vmap for it is
    # tested above); the linearised one runs vmapped and looped.
    for lin, mode in ((False, "loop"), (True, "vmap"), (True, "loop")):
        cbs = (
            sharpness(LOSS, every=2, num_iters=8, chunk_size=5, linearize=lin),
            spectral_density(LOSS, every=4, num_iters=6, num_probes=2, grid=grid, linearize=lin),
        )
        pstep = population.make_step(LOSS, OPT, mode=mode, callbacks=cbs, chunk_size=4)
        got[lin, mode] = population.train_population(
            pstep, NET.init, DATA, learning_rates=LRS[:3], seeds=SEEDS[:3], num_steps=8
        ).metrics
    ref = got[False, "loop"]
    assert np.isfinite(ref["sharpness"][:, ::2]).all()
    for key, m in got.items():
        for k in ref:
            np.testing.assert_allclose(m[k], ref[k], rtol=1e-8, atol=1e-12, err_msg=f"{k} {key}")


def test_bad_initial_state():
    pstep = population.make_step(LOSS, OPT, mode="loop")
    pop2 = population.train_population(
        pstep, NET.init, DATA, learning_rates=LRS[:2], seeds=SEEDS[:2], num_steps=2
    )
    with pytest.raises(ValueError, match="params: every leaf"):
        population.train_population(
            pstep, None, DATA, learning_rates=LRS[:3], seeds=SEEDS[:3], num_steps=2,
            params=pop2.params,
        )  # fmt: skip
    with pytest.raises(ValueError, match="opt_state: every leaf"):
        population.train_population(
            pstep, NET.init, DATA, learning_rates=LRS[:3], seeds=SEEDS[:3], num_steps=2,
            opt_state=pop2.opt_state,
        )  # fmt: skip
    with pytest.raises(ValueError, match="init_fn"):
        population.train_population(
            pstep, None, DATA, learning_rates=LRS[:2], seeds=SEEDS[:2], num_steps=2
        )


def test_bad_data_shapes_and_batch_size_fail_before_any_work():
    bad = (DATA[0], jnp.ones((5, 2)))
    never = lambda key: pytest.fail("init_fn called")  # noqa: E731
    with pytest.raises(ValueError, match="data"):
        population.train_population(
            population.make_step(LOSS, OPT, mode="vmap"), never, bad,
            learning_rates=[0.1], seeds=[0], num_steps=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="batch_size: the step's batch_size 50 exceeds the 24"):
        population.train_population(
            population.make_step(LOSS, OPT, mode="loop", batch_size=50), never, DATA,
            learning_rates=[0.1], seeds=[0], num_steps=2,
        )  # fmt: skip
