"""The adaptive-EoS study's engine: frozen-preconditioner Adam, the steps and the runs.

Split from :mod:`hessian_lab.studies.adaptive_eos` to keep both modules under 400 lines: this one
holds the numerics (the two problems, the frozen-``P`` optimizer, a preconditioned-sharpness
callback for any diagonal ``P``, and the training runs), the study module its contract (Config,
summary, verdict). Functions here take any object with the study Config's fields.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hessian_lab as hl
from hessian_lab import callbacks, losses, models, trainer
from hessian_lab import tree as tu
from hessian_lab.optim import make_optimizer
from hessian_lab.problem import Problem

from . import kit, problems, problems_builtin

__all__ = ["ARCHS", "TASKS", "Curves", "FrozenState", "Steps", "frozen_momentum", "frozen_state"]
__all__ += ["diagonal_preconditioned_sharpness", "make_model", "make_problem", "make_steps"]
__all__ += ["threshold", "train_all"]

ARCHS = ("mlp", "transformer")
TASKS = ("walks", "lcg")


def make_model(c) -> models.Model:
    """The network of config ``c`` (see :func:`make_problem`), without its data."""
    if c.arch == "transformer":
        return problems_builtin.sequence_transformer(c)
    return models.mlp(64, 10, depth=c.depth, width=c.width, activation=c.activation)


def make_problem(c) -> Problem:
    """The full-batch problem of config ``c``: the edge-of-stability MLP, or the transformer.

    * ``"mlp"``: :func:`studies.problems.make_problem` (an MLP on the first ``n`` digits, centred,
      one-hot targets, MSE), shared with the edge-of-stability study;
    * ``"transformer"``: ``models.transformer`` (pre-LayerNorm, decoder-only) on ``n`` sequences
      of ``context`` tokens generated from ``seed``: random walks on a random out-degree-3 graph
      of ``vocab`` nodes (``data.graph_walks``; the best next-token cross-entropy is ``log 3``,
      below it the network memorises its walks) or full-period linear congruential sequences
      modulo ``vocab`` (``data.lcg_sequences``); mean next-token cross-entropy over every
      position (``losses.make_loss_fn(apply, "xent")``).
    """
    if c.arch == "mlp":
        return problems.make_problem(
            n_train=c.n,
            depth=c.depth,
            width=c.width,
            activation=c.activation,
            normalization=c.normalization,
        )
    ds = problems_builtin.token_sequences(c.task, c.seed, c.n, vocab=c.vocab, context=c.context)
    model = make_model(c)
    desc = (
        f"transformer {c.num_layers} x d={c.d_model} ({c.num_heads} heads) on {c.n} {c.task} "
        f"sequences (vocab {c.vocab}, context {c.context}), next-token cross-entropy"
    )
    loss_fn = losses.make_loss_fn(model.apply, "xent")
    return Problem(model, loss_fn, (jnp.asarray(ds.x), jnp.asarray(ds.y)), desc)


def threshold(b1: float) -> float:
    """Return the stability threshold (2 + 2 b1) / (1 - b1) of eta lambda(P^-1 H) (2 for b1 = 0)."""
    return (2.0 + 2.0 * b1) / (1.0 - b1)


class FrozenState(NamedTuple):
    """State of :func:`frozen_momentum`: the EMA momentum and the frozen diagonal ``P``."""

    mu: Any
    precond: Any


def frozen_momentum(learning_rate, b1) -> optax.GradientTransformation:
    """Adam with ``P`` frozen: ``m <- b1 m + (1 - b1) g``, update ``-learning_rate m / P``.

    ``init`` gives ``mu = 0`` and ``P = 1``; start from an Adam run with :func:`frozen_state`. Use
    through ``optax.inject_hyperparams(frozen_momentum)`` so the rate is an array.
    """

    def init(params):
        ones = jax.tree.map(jnp.ones_like, params)
        return FrozenState(jax.tree.map(jnp.zeros_like, params), ones)

    def update(grads, state, params=None):
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        upd = jax.tree.map(lambda m, p: -learning_rate * m / p, mu, state.precond)
        return upd, FrozenState(mu, state.precond)

    return optax.GradientTransformation(init, update)


def frozen_state(adam_state, grads, *, b1: float, b2: float, eps: float) -> FrozenState:
    """The frozen branch's start: Adam's momentum and the ``P`` its next update would apply."""
    p = hl.adam_preconditioner(adam_state, grads, b1=b1, b2=b2, eps=eps)
    return FrozenState(optax.tree_utils.tree_get(adam_state, "mu"), p)


def diagonal_preconditioned_sharpness(
    loss_fn, precond_fn, *, every: int, num_iters: int
) -> callbacks.Callback:
    """Record ``preconditioned_sharpness`` for any diagonal ``P = precond_fn(opt_state, grads)``.

    ``callbacks.preconditioned_sharpness`` computes Adam's ``P`` itself; RMSProp's and the
    frozen ``P`` need this variant. Top eigenvalue of ``P^-1/2 H P^-1/2`` by Lanczos on the
    full training set (``StepInfo.data``), warm-started from the last top eigenvector.
    """

    def init(params):
        return tu.normalize(tu.random_like(jax.random.key(0), params))

    def update(v0, info):
        mv = hl.full_data_hvp(loss_fn, info.params, info.data, chunk_size=info.data[0].shape[0])
        p = precond_fn(info.opt_state, info.grads)
        res = hl.preconditioned_sharpness(mv, p, v0, k=1, num_iters=num_iters)
        lam = res.values[0].astype(jnp.result_type(float))
        return jax.tree.map(lambda x: x[0], res.vectors), {"preconditioned_sharpness": lam}

    return callbacks.Callback(init, update, every)


class Steps(NamedTuple):
    """The compiled steps of a study run: Adam, frozen-P Adam and RMSProp, each measuring
    ``preconditioned_sharpness`` (its own ``P``) and the raw ``sharpness``."""

    adam: trainer.Step
    frozen: trainer.Step
    rmsprop: trainer.Step


def make_steps(c, loss_fn) -> Steps:
    """Build the three steps of config ``c``; every learning rate reuses them (one compile each).

    The chunk length divides both Adam phases (``freeze_step`` and the rest) when it can, so the
    second phase reuses the first one's program.
    """
    kw = {"every": c.every, "num_iters": c.num_iters}
    sharp = callbacks.sharpness(loss_fn, **kw)
    adam_pre = callbacks.preconditioned_sharpness(loss_fn, b1=c.b1, b2=c.b2, eps=c.eps, **kw)

    def rms_p(state, g):
        return hl.rmsprop_preconditioner(state, g, decay=c.rmsprop_decay, eps=c.rmsprop_eps)

    rms_pre = diagonal_preconditioned_sharpness(loss_fn, rms_p, **kw)
    frozen_pre = diagonal_preconditioned_sharpness(
        loss_fn, lambda state, g: state.inner_state.precond, **kw
    )
    f, t = c.freeze_step, c.num_steps
    chunk = min(500, *([t] if f == 0 else [f, t - f]))
    adam = make_optimizer("adam", learning_rate=1.0, b1=c.b1, b2=c.b2, eps=c.eps)
    frozen = optax.inject_hyperparams(frozen_momentum)(learning_rate=1.0, b1=c.b1)
    rms = make_optimizer("rmsprop", learning_rate=1.0, decay=c.rmsprop_decay, eps=c.rmsprop_eps)
    return Steps(
        trainer.make_step(loss_fn, adam, callbacks=[adam_pre, sharp], chunk_size=chunk),
        trainer.make_step(loss_fn, frozen, callbacks=[frozen_pre, sharp], chunk_size=chunk),
        trainer.make_step(loss_fn, rms, callbacks=[rms_pre, sharp], chunk_size=chunk),
    )


class Curves(NamedTuple):
    """One run's records: ``pre`` (K,) lambda_max(P^-1 H), ``sharp`` (K,) lambda_max(H), ``loss``
    (T,) (NaN before the run started and after it stopped), ``diverged``."""

    pre: np.ndarray
    sharp: np.ndarray
    loss: np.ndarray
    diverged: bool


def curves(histories, num_steps: int, every: int, *, start: int = 0, diverged=None) -> Curves:
    """Concatenate ``histories`` from step ``start``, pad to ``num_steps`` with NaN, and pick the
    sharpness records (every ``every`` steps)."""
    full = []
    for k in ("preconditioned_sharpness", "sharpness", "loss"):
        a = np.concatenate([np.full(start, np.nan), *(h[k] for h in histories)])
        full.append(np.concatenate([a, np.full(num_steps - a.size, np.nan)]))
    div = any(h.diverged for h in histories) if diverged is None else diverged
    return Curves(full[0][::every], full[1][::every], full[2], bool(div))


def _adam(c, steps: Steps, problem, params0, lr, counter) -> tuple[Curves, Curves | None]:
    """Adam at ``lr``; with ``freeze_step``, in two phases, and the frozen-P branch forked."""
    t, f, e, data, hp = c.num_steps, c.freeze_step, c.every, problem.data, {"learning_rate": lr}
    parts = [counter.part(n) for n in ([t] if not f else [f, t - f, t - f])]
    r1 = trainer.train(
        steps.adam, params0, data, num_steps=f or t, hyperparams=hp, progress=parts[0]
    )
    if not f:
        return curves([r1.history], t, e), None
    if r1.history.diverged:  # no fork: the branch shares the diverged trajectory
        return curves([r1.history], t, e), curves([], t, e, start=t, diverged=True)
    kw = {"num_steps": t - f, "hyperparams": hp}
    r2 = trainer.train(steps.adam, r1.params, data, opt_state=r1.opt_state, progress=parts[1], **kw)
    g = jax.grad(problem.loss_fn)(r1.params, data)
    state = steps.frozen.optimizer.init(r1.params)
    state = state._replace(inner_state=frozen_state(r1.opt_state, g, b1=c.b1, b2=c.b2, eps=c.eps))
    rf = trainer.train(steps.frozen, r1.params, data, opt_state=state, progress=parts[2], **kw)
    return curves([r1.history, r2.history], t, e), curves([rf.history], t, e, start=f)


def train_all(c, problem: problems.Problem, *, progress=None) -> dict[str, np.ndarray]:
    """Train every run of config ``c`` on ``problem``; return the Results arrays by field name.

    ``progress(done, total)`` counts training steps over all runs (the frozen branches too).
    """
    t, f, e = c.num_steps, c.freeze_step, c.every
    steps = make_steps(c, problem.loss_fn)
    params0 = problem.model.init(jax.random.key(c.seed))
    per_adam = t + (t - f if f else 0)
    counter = kit.StepCounter(len(c.adam_lrs) * per_adam + len(c.rmsprop_lrs) * t, progress)
    out: dict[str, list[Curves]] = {"adam": [], "frozen": [], "rms": []}
    for lr in c.adam_lrs:
        adam, frozen = _adam(c, steps, problem, params0, lr, counter)
        out["adam"].append(adam)
        if frozen is not None:
            out["frozen"].append(frozen)
    for lr in c.rmsprop_lrs:
        hp = {"learning_rate": lr}
        r = trainer.train(
            steps.rmsprop,
            params0,
            problem.data,
            num_steps=t,
            hyperparams=hp,
            progress=counter.part(t),
        )
        out["rms"].append(curves([r.history], t, e))
    counter.finish()
    k, arrays = len(range(0, t, e)), {"record_steps": np.arange(0, t, e)}
    for key, rows in out.items():
        for field, width in (("pre", k), ("sharp", k), ("loss", t)):
            stacked = [getattr(o, field) for o in rows]
            arrays[f"{key}_{field}"] = np.stack(stacked) if rows else np.zeros((0, width))
        arrays[f"{key}_diverged"] = np.array([o.diverged for o in rows], bool)
    return arrays
