"""The training runs of the warmup study: GD warmup in SP/muP, catapult search, Adam vs GI-Adam.

Every run goes through :mod:`hessian_lab.trainer` / :mod:`hessian_lab.population`. Two compiled
steps per model (schedule hyperparameters injected): one without callbacks, shared by the
trainability sweep and every catapult search trial, and one with the sharpness callbacks for
lambda0 and the trajectories; Adam and GI-Adam share a third. Populations use ``mode="loop"``:
on CPU a vmapped Lanczos callback is several times slower than running members one after
another through the same compiled chunk. (A module of its own: with the study's Config, summary
and verdict the study would pass 400 lines.)

``config`` below is a :class:`hessian_lab.studies.warmup.Config`; ``counter`` a
:class:`hessian_lab.studies.kit.StepCounter` whose total is :func:`total_steps`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hessian_lab import callbacks as cbk
from hessian_lab import models
from hessian_lab.losses import make_loss_fn, mse
from hessian_lab.lr_search import catapult_search
from hessian_lab.optim import constant, gi_adam_init, make_optimizer
from hessian_lab.population import make_step, member_keys, train_population
from hessian_lab.problem import Problem
from hessian_lab.trainer import make_step as make_train_step
from hessian_lab.trainer import train

from . import problems_user as pu

__all__ = ["INIT_MODES", "OPTIMIZERS", "WARMUPS", "adam_part", "c_trainable", "constant_loss"]
__all__ += ["gd_part", "loss_scale", "model", "problems_of", "search_cost", "total_steps"]
__all__ += ["variants"]

INIT_MODES = ("zero", "catapult")  # eta_init of the trainability sweep
OPTIMIZERS = ("adam", "gi_adam")
WARMUPS = ("constant", "warmup")  # the Adam runs: constant rate, linear warmup


def variants(config) -> tuple[str, ...]:
    """The networks the GD part trains: the MLP per ``params`` entry, or ``("problem",)``."""
    return ("problem",) if config.problem else tuple(config.params)


def model(config, param, in_dim: int = 64, out_dim: int = 10):
    """Return ``(net, loss_fn)``: the MLP in parameterisation ``param`` and its MSE loss."""
    bias = config.mup_bias if param == "mup" else True
    net = models.mlp(in_dim, out_dim, depth=config.depth, width=config.width, param=param,
                     bias=bias)  # fmt: skip
    return net, make_loss_fn(net.apply, "mse", normalization=config.normalization)


def problems_of(config) -> dict[str, Problem]:
    """``{variant: Problem}`` for :func:`variants` and the Adam part (SP, or the user's problem).

    The built-in MLP trains on the first ``n`` examples of ``data`` (digits by default),
    standardised per sample, one-hot targets; the user's function gets the data as they are
    and the first seed. Call under ``jax.enable_x64(True)``: everything is float64.
    """
    if config.problem:
        return {"problem": pu.user_problem(config.problem, data=config.data, seed=config.seeds[0],
                                           args=config.problem_args, n=config.n,
                                           study="warmup")}  # fmt: skip
    ds = pu.builtin_data(config.data, config.n, standardize="sample")
    data = (jnp.asarray(ds.x, jnp.float64), jnp.asarray(ds.y, jnp.float64))
    out = {}
    for param in dict.fromkeys((*config.params, "sp")):
        net, loss_fn = model(config, param, ds.x.shape[1], ds.y.shape[1])
        out[param] = Problem(net, loss_fn, data, f"mlp ({param}) on {config.data}")
    return out


def loss_scale(config, prob: Problem) -> float:
    """The loss that trainability is measured against: the best constant predictor's for the
    built-in MSE, the loss at initialisation (first seed) for the user's problem."""
    if config.problem:
        p0 = prob.model.init(member_keys(config.seeds[0])[0])
        return float(prob.loss_fn(p0, prob.data))
    return constant_loss(config, prob.data)


def constant_loss(config, data) -> float:
    """Loss of the best constant predictor (per-output mean of the targets)."""
    y = data[1]
    pred = jnp.broadcast_to(jnp.mean(y, axis=0), y.shape)
    return float(mse(pred, y, normalization=config.normalization))


def c_trainable(trainable, c_grid):
    """Largest c whose members are trainable for at least half of the seeds (0.0 if none)."""
    ok = trainable.mean(axis=-1) >= 0.5
    return np.where(ok, c_grid, 0.0).max(axis=-1)


def search_cost(config, num_steps: int) -> int:
    """Progress units of one catapult search: ``num_steps`` updates x about bisect_iters + 10
    trials (the exact count is known only afterwards)."""
    return num_steps * (config.search_bisect_iters + 10)


def _sweep_steps(config) -> int:
    return max(max(config.warmup_grid) + config.post_steps, config.chunk_size)


def total_steps(config) -> int:
    """Training steps of a run (members x steps, summed), the progress total."""
    c, S = config, len(config.seeds)
    searches = sum(search_cost(c, k) for k in c.search_steps)
    if c.init_search_steps not in c.search_steps:
        searches += search_cost(c, c.init_search_steps)
    members = 2 * len(c.warmup_grid) * c.num_c * S
    per_param = S + S * searches + members * _sweep_steps(c) + len(c.traj_c_trgt) * c.traj_steps
    return len(variants(c)) * per_param + 4 + 4 * c.adam_num_eta * c.adam_steps


def _done(counter, size: int) -> None:
    report = counter.part(size)
    if report is not None:
        report(size, size)


def gd_part(config, probs, counter):
    """Sharpness at init, catapult searches, trainability sweep and trajectories, per model."""
    cfg = config
    M, S, C = len(variants(cfg)), len(cfg.seeds), len(cfg.traj_c_trgt)
    W, K = len(cfg.warmup_grid), len(cfg.search_steps)
    c_grid = np.geomspace(cfg.c_min, cfg.c_max, cfg.num_c)
    E, T = c_grid.size, cfg.traj_steps
    l_const = loss_scale(cfg, probs[variants(cfg)[0]])
    thr = cfg.divergence_factor * l_const
    out = {
        "lam0": np.zeros((M, S)),
        "loss0": np.zeros((M, S)),
        "loss_const": np.asarray(l_const),
        "traj_loss": np.zeros((M, C, T)),
        "traj_lr": np.zeros((M, C, T)),
        "traj_sharpness": np.zeros((M, C, T)),
        "traj_catapult": np.zeros((M, C, T)),
        "traj_diverged": np.zeros((M, C), bool),
        "c_grid": c_grid,
        "final_loss": np.zeros((M, 2, W, E, S)),
        "diverged": np.zeros((M, 2, W, E, S), bool),
        "trainable": np.zeros((M, 2, W, E, S), bool),
        "c_trainable": np.zeros((M, 2, W)),
        "eta_init": np.zeros((M, S)),
        "search_estimate": np.zeros((M, S, K)),
        "search_trials": np.zeros((M, S, K), np.int64),
    }
    for m, param in enumerate(variants(cfg)):
        net, loss_fn, data = probs[param][:3]
        opt = make_optimizer("gd", learning_rate=constant(1.0))
        inits = [net.init(member_keys(s)[0]) for s in cfg.seeds]
        cbs = (
            cbk.sharpness(loss_fn, every=cfg.sharpness_every, num_iters=cfg.lanczos_iters),
            cbk.loss_catapult(),
        )
        plain = make_step(loss_fn, opt, mode="loop", chunk_size=cfg.chunk_size)
        traced = make_step(loss_fn, opt, mode="loop", callbacks=cbs, chunk_size=cfg.chunk_size)
        for j, p0 in enumerate(inits):
            # lambda0 from the trajectories' own compiled program: loss_goal=inf stops it at
            # step 0, after the callbacks have measured theta_0.
            h = train(traced.step, p0, data, num_steps=T, loss_goal=np.inf,
                      progress=counter.part(1)).history  # fmt: skip
            out["lam0"][m, j] = h["sharpness"][0]
            out["loss0"][m, j] = h["loss"][0]

        # The catapult search (no Hessian products): estimate of 2/lambda0 vs test steps.
        kw = dict(eta_min=cfg.search_eta_min, growth=cfg.search_growth,
                  bisect_iters=cfg.search_bisect_iters)  # fmt: skip
        for j, p0 in enumerate(inits):
            for k, ks in enumerate(cfg.search_steps):
                res = catapult_search(plain.step, p0, data, num_steps=ks, **kw)
                _done(counter, search_cost(cfg, ks))
                out["search_estimate"][m, j, k] = res.eta
                out["search_trials"][m, j, k] = res.num_trials
            if cfg.init_search_steps in cfg.search_steps:
                k = cfg.search_steps.index(cfg.init_search_steps)
                out["eta_init"][m, j] = out["search_estimate"][m, j, k]
            else:
                ks = cfg.init_search_steps
                out["eta_init"][m, j] = catapult_search(
                    plain.step, p0, data, num_steps=ks, **kw
                ).eta
                _done(counter, search_cost(cfg, ks))

        # Trainability: (init mode, T_wrm, c_trgt, seed), one population, one compiled chunk.
        grid = np.stack(np.meshgrid(np.arange(2), np.arange(W), np.arange(E), np.arange(S),
                                    indexing="ij"), axis=-1).reshape(-1, 4)  # fmt: skip
        i_, w_, e_, s_ = grid.T
        lam = out["lam0"][m, s_]
        pop = train_population(
            plain,
            net.init,
            data,
            learning_rates=c_grid[e_] / lam,
            seeds=np.asarray(cfg.seeds)[s_],
            num_steps=_sweep_steps(cfg),
            hyperparams={
                "warmup_steps": np.asarray(cfg.warmup_grid, float)[w_],
                # the catapult estimate, capped at eta_trgt (never warm *down*)
                "eta_init": np.where(
                    i_ == 1, np.minimum(out["eta_init"][m, s_], c_grid[e_] / lam), 0.0
                ),
            },
            divergence_threshold=thr,
            progress=counter.part(grid.shape[0] * _sweep_steps(cfg)),
        )
        final = np.where(pop.diverged, np.nan, pop.metrics["loss"][:, -1])
        shape = (2, W, E, S)
        out["final_loss"][m] = final.reshape(shape)
        out["diverged"][m] = pop.diverged.reshape(shape)
        good = ~pop.diverged & (np.nan_to_num(final, nan=np.inf) < cfg.trainable_fraction * l_const)
        out["trainable"][m] = good.reshape(shape)
        out["c_trainable"][m] = c_trainable(out["trainable"][m], c_grid)

        # Trajectories (first seed): sharpness vs 2/eta_t and loss catapults during warmup.
        traj = train_population(
            traced,
            net.init,
            data,
            learning_rates=np.asarray(cfg.traj_c_trgt) / out["lam0"][m, 0],
            seeds=np.full(C, cfg.seeds[0]),
            num_steps=T,
            hyperparams={"warmup_steps": float(cfg.traj_warmup_steps), "eta_init": 0.0},
            divergence_threshold=thr,
            progress=counter.part(C * T),
        )
        out["traj_loss"][m] = traj.metrics["loss"]
        out["traj_lr"][m] = traj.metrics["learning_rate"]
        out["traj_sharpness"][m] = traj.metrics["sharpness"]
        out["traj_catapult"][m] = traj.metrics["loss_catapult"]
        out["traj_diverged"][m] = traj.diverged
    return out


def adam_part(config, prob, counter):
    """Adam and GI-Adam, constant rate and linear warmup, on ``prob`` (the SP MLP or the user's
    problem; first seed).

    GI-Adam is Adam started from ``gi_adam_init(state, g0)`` with the full-batch g0: the same
    update as ``make_optimizer("gi_adam")`` in full-batch training, but one compiled program for
    both, and the step-0 preconditioner the callback reads is already GI-Adam's.
    """
    cfg = config
    net, loss_fn, data = prob[:3]
    p0 = net.init(member_keys(cfg.seeds[0])[0])
    opt = make_optimizer("adam", learning_rate=constant(1.0), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    g0 = jax.jit(jax.grad(loss_fn))(p0, data)
    states = (opt.init(p0), gi_adam_init(opt.init(p0), g0))
    zero_grad = any(bool(jnp.any(g == 0)) for g in jax.tree.leaves(g0))
    etas = np.geomspace(cfg.adam_eta_min, cfg.adam_eta_max, cfg.adam_num_eta)
    A, T = etas.size, cfg.adam_steps
    thr = cfg.divergence_factor * loss_scale(cfg, prob)
    cbs = (
        cbk.preconditioned_sharpness(
            loss_fn, every=cfg.sharpness_every, num_iters=cfg.lanczos_iters
        ),
    )
    step = make_train_step(loss_fn, opt, callbacks=cbs, chunk_size=cfg.chunk_size)
    final = np.full((2, 2, A), np.nan)
    div = np.zeros((2, 2, A), bool)
    pre = np.full((2, 2, A, T), np.nan)
    loss = np.full((2, 2, A, T), np.nan)
    precond0, precond0_eps0 = np.zeros(2), np.full(2, np.nan)
    for o, st in enumerate(states):
        # P^-1 H at theta_0 from the Adam program's own callback (loss_goal=inf stops at step 0)
        for eps, dest in ((cfg.eps, precond0), (0.0, None if zero_grad else precond0_eps0)):
            if dest is None:
                _done(counter, 1)
                continue
            h = train(step, p0, data, num_steps=T, hyperparams={"eps": eps}, opt_state=st,
                      loss_goal=np.inf, progress=counter.part(1)).history  # fmt: skip
            dest[o] = h["preconditioned_sharpness"][0]
    for o, st in enumerate(states):
        for u, tw in enumerate((0.0, float(cfg.adam_warmup_steps))):
            for a, eta in enumerate(etas):
                h = train(
                    step,
                    p0,
                    data,
                    num_steps=T,
                    hyperparams={"learning_rate": eta, "warmup_steps": tw, "eta_init": 0.0},
                    opt_state=st,
                    divergence_threshold=thr,
                    progress=counter.part(T),
                ).history
                n = len(h["loss"])
                loss[o, u, a, :n] = h["loss"]
                pre[o, u, a, :n] = h["preconditioned_sharpness"]
                div[o, u, a] = h.diverged
                final[o, u, a] = np.nan if h.diverged else h["loss"][-1]
    return {
        "adam_eta": etas,
        "adam_final_loss": final,
        "adam_diverged": div,
        "adam_precond": pre,
        "adam_loss": loss,
        "precond0": precond0,
        "precond0_eps0": precond0_eps0,
    }
