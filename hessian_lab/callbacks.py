"""Curvature measurements that run inside the jitted training step, at a cadence.

A callback is an optax-style pure pair ``Callback(init, update, every)`` run by
:func:`run_callbacks` at its cadence, inside the step (see :mod:`hessian_lab.callback_protocol`,
re-exported here). At a step where a callback does not run, each of its metrics is NaN. Metrics
at step t are measured at the params theta_t *before* update t (the same params the step's loss
and gradient see).

Sharpness is the largest algebraic Hessian eigenvalue of the loss over the full training set (or a
fixed subset) -- :func:`sharpness`. Two minibatch quantities are named apart from it:
:func:`minibatch_sharpness`, the top eigenvalue of the step's minibatch Hessian, and
:func:`batch_sharpness`, the curvature of the minibatch loss along the minibatch gradient
(Andreyev & Beneventano, arXiv 2412.20553), the quantity that settles at ``2/eta`` under SGD.

Every callback that takes a ``loss_fn`` also takes a :class:`hessian_lab.StatefulLoss` (a model
with BatchNorm statistics or dropout): it then measures the loss at the model state the step
passes in ``StepInfo.state``, in the loss's mode (:func:`hessian_lab.curvature_loss`).

Example (a user's own loop; the Hessian here is diag(1, 4, 9) / 3):
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda p, b: 0.5 * jnp.mean((b[0] @ p - b[1]) ** 2)
    >>> data, params = (jnp.diag(jnp.array([1.0, 2.0, 3.0])), jnp.zeros(3)), jnp.ones(3)
    >>> cb = sharpness(loss_fn, every=10, num_iters=3)
    >>> state = cb.init(params)
    >>> states, metrics = run_callbacks((cb,), (state,), StepInfo(jnp.asarray(0), params, data=data))
    >>> round(float(metrics["sharpness"]), 4)
    3.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import adam_preconditioner, alignment_callback, hvp, ntk_top_eig, ntk_trace, top_eigs, trace
from . import critical_sharpness_callback as _critical_sharpness
from . import preconditioned_sharpness as preconditioned_top_eigs
from . import spectral_density as slq_density
from . import tree as tu
from .callback_protocol import Callback as Callback
from .callback_protocol import StepInfo as StepInfo
from .callback_protocol import check_every, full_data_hessian, random_unit, stateful, step_data
from .callback_protocol import run_callbacks as run_callbacks

__all__ = [
    "Callback",
    "StepInfo",
    "alignment",
    "batch_sharpness",
    "critical_sharpness",
    "full_loss",
    "grad_norm",
    "loss_catapult",
    "minibatch_sharpness",
    "preconditioned_sharpness",
    "run_callbacks",
    "sharpness",
    "spectral_density",
    "traces",
]


# Callbacks made elsewhere, taking a StatefulLoss too (as every loss-taking callback here does).
alignment = stateful(alignment_callback)
critical_sharpness = stateful(_critical_sharpness)


def _float(x):
    return jnp.asarray(x, jnp.result_type(float))


def grad_norm(*, every: int = 1) -> Callback:
    """Record ``grad_norm`` = ||g_t||_2 of the step's gradient."""
    check_every(every)

    def update(state, info):
        sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(info.grads))
        return state, {"grad_norm": _float(jnp.sqrt(sq))}

    return Callback(lambda params: (), update, every)


def loss_catapult(*, every: int = 1) -> Callback:
    """Mark a loss catapult: ``loss_catapult`` = 1.0 when L_t > L_0, else 0.0.

    Also records ``loss_ratio`` = L_t / L_0. L_0 is the loss the callback saw at its first run
    (step 0 in the trainer), kept in the state. Under SGD L_t is the minibatch loss; use a
    :func:`full_loss` for the training-set loss. (Lewkowycz et al. 2020, arXiv 2003.02218.)
    """
    check_every(every)

    def update(loss0, info):
        loss = _float(info.loss)
        loss0 = jnp.where(jnp.isnan(loss0), loss, loss0)
        return loss0, {"loss_catapult": _float(loss > loss0), "loss_ratio": loss / loss0}

    return Callback(lambda params: _float(jnp.nan), update, every)


@stateful
def full_loss(loss_fn, data=None, *, every: int = 1, name: str = "full_loss") -> Callback:
    """Record the mean loss over ``data`` (default: the run's training set) at theta_t."""
    check_every(every)

    def update(state, info):
        return state, {name: _float(loss_fn(info.params, step_data(data, info)))}

    return Callback(lambda params: (), update, every)


def _lr_events(lam, info, name):
    lr = _float(jnp.nan if info.learning_rate is None else info.learning_rate)
    return {
        f"{name}_x_lr": lam * lr,
        f"{name}_above_2_over_lr": _float(jnp.where(jnp.isnan(lr), jnp.nan, lam * lr > 2)),
    }


def _eig_metrics(res, name, k):
    out = {name: _float(res.values[0]), f"{name}_residual": _float(res.residuals[0])}
    out |= {f"{name}_{i}": _float(res.values[i]) for i in range(1, k)}
    return out


def _top_eig_callback(make_matvec, *, name, every, k, num_iters, key, precond=None):
    check_every(every)
    if not isinstance(k, int) or k < 1 or not isinstance(num_iters, int) or num_iters < k:
        raise ValueError(
            f"k, num_iters: need ints with 1 <= k <= num_iters, got k={k!r}, num_iters={num_iters!r}"
        )
    key = jax.random.key(0) if key is None else key

    def init(params):
        return random_unit(key, params)

    def update(v0, info):
        matvec = make_matvec(info)
        # The residual from the basis: a measurement costs num_iters products, not num_iters + k
        kw = {"k": k, "num_iters": num_iters, "exact_residuals": False}
        if precond is None:
            res = top_eigs(matvec, v0, **kw)
        else:
            res = preconditioned_top_eigs(matvec, precond(info), v0, **kw)
        v1 = jax.tree.map(lambda x: x[0], res.vectors)
        return v1, _eig_metrics(res, name, k) | _lr_events(_float(res.values[0]), info, name)

    return Callback(init, update, every)


@stateful
def sharpness(
    loss_fn,
    data=None,
    *,
    every: int = 10,
    k: int = 1,
    num_iters: int = 20,
    chunk_size: int | None = None,
    linearize: bool = False,
    subset: int | None = None,
    key=None,
) -> Callback:
    """Record the sharpness: top-k Hessian eigenvalues of the mean loss over ``data`` (Lanczos).

    Uses ``hessian_lab.top_eigs(full_data_hvp(loss_fn, params, data, chunk_size=...), v0)``,
    warm-started from the previous top eigenvector (the state). Cost: ``num_iters`` Hessian-vector
    products over the dataset per run. Metrics: ``sharpness`` (largest algebraic eigenvalue),
    ``sharpness_residual`` (``||H y - lambda y||``, from the run's own products:
    ``top_eigs(..., exact_residuals=False)``), ``sharpness_1..k-1``, ``sharpness_x_lr``
    (eta_t lambda) and ``sharpness_above_2_over_lr`` (1.0 when lambda > 2/eta_t: the GD edge of
    stability).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean over the batch.
      data: a fixed dataset (pytree, leading axis n); None: the run's training set
        (``StepInfo.data``, passed to the jitted step as an argument, not a constant).
      every: cadence in steps. k: eigenvalues. num_iters: Lanczos iterations.
      chunk_size: examples per chunk of the full-data product (None: all at once).
      linearize: linearise the full-data gradient once per measurement and reuse it for the
        ``num_iters`` products (``full_data_hvp(..., linearize=True)``): cheaper products, but
        the activations of all of ``data`` are kept while the callback runs.
      subset: measure on a fixed random subset of this many examples of ``data`` (or of the
        training set): the same examples at every measurement, those of
        ``hessian_lab.data.random_subset(train, subset, seed=0)``. Costs ``subset / n`` of the
        full products; on digits a quarter stays within 0.5% of the full-data sharpness
        (benchmarks/bench_callbacks.py), but check on your problem. None: all of ``data``.
      key: PRNG key for the initial vector (default ``jax.random.key(0)``).

    Raises:
      ValueError: bad ``every``, ``k``/``num_iters``, ``linearize`` or ``subset`` (not in
        ``[1, n]``; with ``data=None`` checked against the training set when the step is traced).
    """

    make = full_data_hessian(loss_fn, data, chunk_size, linearize, subset)
    return _top_eig_callback(make, name="sharpness", every=every, k=k, num_iters=num_iters, key=key)


@stateful
def minibatch_sharpness(
    loss_fn, *, every: int = 10, k: int = 1, num_iters: int = 20, key=None
) -> Callback:
    """Record ``minibatch_sharpness``: top Hessian eigenvalue of the loss on the step's minibatch.

    Not the sharpness: by convexity of lambda_max its average over batches is biased upward. Not
    the batch sharpness either (:func:`batch_sharpness`).
    """

    def make(info):
        return hvp(loss_fn, info.params, info.batch)

    return _top_eig_callback(
        make, name="minibatch_sharpness", every=every, k=k, num_iters=num_iters, key=key
    )


@stateful
def batch_sharpness(loss_fn, *, every: int = 1) -> Callback:
    """Record ``batch_sharpness = g_B^T H_B g_B / |g_B|^2`` on the step's own minibatch B.

    The curvature of the minibatch loss along its own gradient (Andreyev & Beneventano 2024,
    arXiv 2412.20553). Its expectation over batches -- the mean of the recorded values over
    steps -- is what settles at ``2/eta`` under SGD, while the full-batch sharpness sits below.
    Cost: one Hessian-vector product on the minibatch per measured step; ``g_B`` is the step's
    gradient. NaN where ``g_B = 0``.
    """
    every = check_every(every)

    def update(state, info):
        g = info.grads
        hg = hvp(loss_fn, info.params, info.batch)(g)
        gg = tu.vdot(g, g)
        value = jnp.where(gg > 0, tu.vdot(g, hg) / jnp.where(gg > 0, gg, 1.0), jnp.nan)
        return state, {"batch_sharpness": jnp.asarray(value, jnp.result_type(float))}

    return Callback(lambda params: (), update, every)


@stateful
def preconditioned_sharpness(
    loss_fn,
    data=None,
    *,
    every: int = 10,
    k: int = 1,
    num_iters: int = 20,
    chunk_size=None,
    linearize: bool = False,
    subset: int | None = None,
    b1=None,
    b2=None,
    eps=None,
    key=None,
) -> Callback:
    """Record ``preconditioned_sharpness``: top eigenvalue of P^-1/2 H P^-1/2 for Adam.

    P is the preconditioner the *next* update applies, ``hessian_lab.adam_preconditioner`` of the
    step's optimizer state and gradient (Cohen et al. 2022, arXiv 2207.14484); it equilibrates at
    (2 + 2 b1) / ((1 - b1) eta). b1, b2, eps default to the optimizer's injected hyperparameters.
    The metric ``preconditioned_sharpness_x_lr`` compares with 2 + 2 b1 over 1 - b1 (38 at b1=0.9).
    ``data``, ``chunk_size``, ``linearize`` and ``subset`` as in :func:`sharpness`.
    """

    make = full_data_hessian(loss_fn, data, chunk_size, linearize, subset)

    def precond(info):
        return adam_preconditioner(info.opt_state, info.grads, b1=b1, b2=b2, eps=eps)

    return _top_eig_callback(
        make,
        name="preconditioned_sharpness",
        every=every,
        k=k,
        num_iters=num_iters,
        key=key,
        precond=precond,
    )


@stateful
def traces(
    loss_fn,
    apply_fn=None,
    data=None,
    *,
    every: int = 10,
    num_matvecs: int = 30,
    ntk_iters: int = 20,
    key=None,
    chunk_size=None,
    normalization: str = "per_example",
    linearize: bool = False,
) -> Callback:
    """Record ``hessian_trace`` (Hutchinson) and, with ``apply_fn``, ``ntk_trace``, ``ntk_top_eig``.

    The trace probes use a key carried in the state (split at every run). NTK quantities are
    those of J J^T / n on the inputs ``data[0]`` (``data = (x, y)`` or a ``Dataset``), or of
    J J^T / (n o) with ``normalization="per_output"`` (match the loss's MSE convention).
    ``num_matvecs=0`` skips the Hessian trace (NTK quantities only). ``chunk_size`` and
    ``linearize`` (one linearisation for all ``num_matvecs`` products) as in :func:`sharpness`.
    """
    check_every(every)
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, int) or num_matvecs == 1:
        raise ValueError(f"num_matvecs: must be 0 (skip) or an int >= 2, got {num_matvecs!r}")
    if normalization not in ("per_example", "per_output", "none"):
        raise ValueError(
            f"normalization: must be 'per_example', 'per_output' or 'none', got {normalization!r}"
        )
    if num_matvecs == 0 and apply_fn is None:
        raise ValueError("num_matvecs: 0 skips the Hessian trace, so apply_fn is needed")
    key = jax.random.key(1) if key is None else key
    make = full_data_hessian(loss_fn, data, chunk_size, linearize)

    def update(k0, info):
        d = step_data(data, info)
        n = jax.tree.leaves(d)[0].shape[0]
        k0, sub = jax.random.split(k0)
        out = {}
        if num_matvecs:
            tr = trace(make(info), sub, info.params, num_matvecs=num_matvecs)
            out = {"hessian_trace": _float(tr.value), "hessian_trace_stderr": _float(tr.stderr)}
        if apply_fn is not None:
            ntk_kw = {"normalization": normalization}
            out["ntk_trace"] = _float(
                ntk_trace(apply_fn, info.params, d[0], chunk_size=min(16, n), **ntk_kw)
            )
            out["ntk_top_eig"] = _float(
                ntk_top_eig(apply_fn, info.params, d[0], num_iters=ntk_iters, **ntk_kw).values[0]
            )
        return k0, out

    return Callback(lambda params: key, update, every)


@stateful
def spectral_density(
    loss_fn,
    data=None,
    *,
    every: int = 100,
    num_iters: int = 30,
    num_probes: int = 4,
    grid,
    chunk_size=None,
    linearize: bool = False,
    subset: int | None = None,
    key=None,
) -> Callback:
    """Record ``spectral_density`` (values on the fixed ``grid``) by stochastic Lanczos quadrature.

    The metric is a vector of ``len(grid)`` per run (NaN at skipped steps), so use a sparse
    cadence. ``grid`` must be fixed so that densities at different steps are comparable.
    ``chunk_size``, ``linearize`` and ``subset`` as in :func:`sharpness`; SLQ takes
    ``num_probes x num_iters`` products at one point, where one linearisation pays off most.
    """
    check_every(every)
    key = jax.random.key(2) if key is None else key
    grid = jnp.asarray(grid)
    make = full_data_hessian(loss_fn, data, chunk_size, linearize, subset)

    def update(k0, info):
        k0, sub = jax.random.split(k0)
        res = slq_density(
            make(info), sub, info.params, num_iters=num_iters, num_probes=num_probes, grid=grid
        )
        return k0, {"spectral_density": _float(res.density)}

    return Callback(lambda params: key, update, every)
