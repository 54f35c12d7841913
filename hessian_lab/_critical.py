"""Critical sharpness: a line search along the update the optimizer is about to take.

Kalra et al. 2026 (arXiv 2601.16979): let ``d`` be the update at unit learning rate
(``theta_next = theta + eta d``). The critical step ``eta_c > 0`` is the smallest step at which
the loss comes back, ``L(theta + eta_c d) = L(theta)``, and ``lambda_c = 2 / eta_c``. On a
quadratic ``L(theta + eta d) - L(theta) = eta s + eta^2 c / 2`` with the slope ``s = g^T d`` and
``c = d^T H d``, so ``eta_c = 2 |s| / c`` and, for GD (``d = -g``), ``lambda_c = g^T H g / g^T g``.
It needs forward passes only, no Hessian products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from . import tree as tu
from ._conv_layout import in_loop
from .callback_protocol import Callback, StepInfo, check_every
from .optim import current_learning_rate

__all__ = [
    "STATUS",
    "CriticalResult",
    "critical_sharpness",
    "critical_sharpness_callback",
    "update_direction",
]

PyTree = Any

#: ``CriticalResult.status`` codes, by index: 0 converged (to ``rtol``); 1 budget spent with a
#: bracket (``value`` is the model's root inside it, ``converged`` False); 2 budget spent and the
#: loss never rose (``value`` NaN, ``bracket = (lo, inf)``); 3 not a descent direction,
#: ``g^T d >= 0`` (a zero update included; ``value`` NaN, no passes spent); 4 a non-finite loss
#: or slope at theta or along the line (``value`` NaN).
STATUS = ("converged", "budget", "no_rise", "not_descent", "nonfinite")
_RUNNING, _CONVERGED, _BUDGET, _NO_RISE, _NOT_DESCENT, _NONFINITE = -1, 0, 1, 2, 3, 4


class CriticalResult(NamedTuple):
    """A critical-sharpness line search.

    Attributes:
      value: ``lambda_c = 2 / eta_c`` (NaN when ``status`` is 2, 3 or 4).
      eta_c: the critical step (NaN likewise).
      bracket: ``(lo, hi)`` with ``L(theta + lo d) < L0 <= L(theta + hi d)`` (``lo = 0`` before
        a point below ``L0`` is seen, ``hi = inf`` before the loss rose).
      num_evals: losses evaluated along the line (forward passes; ``<= max_evals``).
      converged: bool, ``status == 0``.
      status: int32 code, an index into :data:`STATUS`.
    """

    value: jax.Array
    eta_c: jax.Array
    bracket: tuple[jax.Array, jax.Array]
    num_evals: jax.Array
    converged: jax.Array
    status: jax.Array


def _anchored_root(s, e, fe):
    """Root of the quadratic ``s eta + c eta^2 / 2`` through ``(e, fe)``: exact on quadratics."""
    return -s * e**2 / (fe - s * e)


def _muller_root(e1, f1, e2, f2, e3, f3):
    """Muller's root: of the quadratic through three points, the one nearest ``e1`` (the
    larger denominator, stable when ``f1`` is ~0); NaN where complex or degenerate."""
    d12, d13, d23 = (f1 - f2) / (e1 - e2), (f1 - f3) / (e1 - e3), (f2 - f3) / (e2 - e3)
    a = (d12 - d23) / (e1 - e3)
    w = d12 + d13 - d23  # the slope at e1
    sq = jnp.sqrt(w * w - 4 * f1 * a)
    return e1 - 2 * f1 / (w + jnp.where(w >= 0, sq, -sq))


class _Line(NamedTuple):
    """The line search's carry."""

    n: jax.Array  # evaluations so far
    status: jax.Array
    lo: jax.Array  # largest step seen with f < 0 (0 at first)
    flo: jax.Array
    hi: jax.Array  # smallest step seen with f >= 0 (inf at first)
    fhi: jax.Array
    pts: jax.Array  # (3, 2): the last three (eta, f), newest first; (0, 0) counts as one
    hit: jax.Array  # the last point met the residual test


def _model_root(s, c: _Line):
    """Where the models put the root: the quadratic through the last three points, else the
    secant of the bracket, else the quadratic anchored at 0 through its one finite end."""
    (e1, f1), (e2, f2), (e3, f3) = c.pts
    # (0, 0) is a root of the quadratic through it: not the one sought
    above = jnp.where(c.lo > 0, c.lo, 1e-6 * c.hi)
    muller = _muller_root(e1, f1, e2, f2, e3, f3)
    muller = jnp.where((muller > above) & (muller < c.hi), muller, jnp.nan)
    secant = c.lo - c.flo * (c.hi - c.lo) / (c.fhi - c.flo)
    found = jnp.isfinite(c.hi)
    anchored = jnp.where(found, _anchored_root(s, c.hi, c.fhi), _anchored_root(s, c.lo, c.flo))
    return jnp.where(jnp.isnan(muller), jnp.where(found & (c.lo > 0), secant, anchored), muller)


def _search(f, loss0, s, eta0, max_evals: int, rtol: float) -> CriticalResult:
    """Bracket and refine the root of ``f(eta) = L(theta + eta d) - L0`` (a ``while_loop``).

    Step 1 tries ``eta0``; step 2 the root of the quadratic anchored at 0 (value and slope)
    through it, exact on quadratics; later steps Muller's root (the quadratic through the last
    three points, (0, 0) included at first) inside the bracket. Safeguards, when a step did not
    halve ``|f|``: before the loss has risen the next step at least doubles the last increment
    (and never exceeds 64 lo), so a model that keeps falling short cannot creep; after, the
    bracket is bisected.
    """
    dt = jnp.result_type(loss0, s, float)
    s, eta0 = jnp.asarray(s, dt), jnp.asarray(eta0, dt)
    zero, inf, nan = jnp.zeros((), dt), jnp.asarray(jnp.inf, dt), jnp.asarray(jnp.nan, dt)
    start = jnp.select(
        [~(jnp.isfinite(loss0) & jnp.isfinite(s)), s >= 0], [_NONFINITE, _NOT_DESCENT], _RUNNING
    )
    pts = jnp.array([[0.0, 0.0], [jnp.nan, jnp.nan], [jnp.nan, jnp.nan]], dt)
    init = _Line(jnp.int32(0), start.astype(jnp.int32), zero, zero, inf, zero, pts, jnp.bool_(0))

    def propose(c: _Line):
        found, (e1, f1), e2 = jnp.isfinite(c.hi), c.pts[0], c.pts[1, 0]
        model = jnp.where(c.n == 1, _anchored_root(s, e1, f1), _model_root(s, c))
        # the last step did not halve |f|: bisect a bracket, stretch an extrapolation
        stalled = jnp.abs(f1) > jnp.abs(c.pts[1, 1]) / 2
        bisect = found & (c.lo > 0) & (stalled | jnp.isnan(model))
        model = jnp.where(bisect, (c.lo + c.hi) / 2, model)
        # no rise yet: the anchored quadratic may not rise at all (then x4)
        model = jnp.where(found | (jnp.isfinite(model) & (model > c.lo)), model, 4 * c.lo)
        floor = jnp.where(stalled & (c.n >= 3), c.lo + 2 * (e1 - e2), c.lo * (1 + rtol))
        model = jnp.where(found, model, jnp.clip(model, floor, 64 * c.lo))
        return jnp.where(c.n == 0, eta0, model)

    f_in_loop = in_loop(f)  # forward passes in the while loop: fast convolutions on CPU

    def body(c: _Line) -> _Line:
        eta = propose(c)
        fe = jnp.asarray(f_in_loop(eta), dt)
        rose = fe >= 0
        lo, flo = jnp.where(rose, c.lo, eta), jnp.where(rose, c.flo, fe)
        hi, fhi = jnp.where(rose, eta, c.hi), jnp.where(rose, fe, c.fhi)
        # |f| / |s| is the distance to the root on a quadratic (f' = |s| there)
        hit = jnp.abs(fe) <= rtol * jnp.abs(s) * eta
        narrow = jnp.isfinite(hi) & (hi - lo <= rtol * hi)
        n = c.n + 1
        status = jnp.select(
            [~jnp.isfinite(fe), hit | narrow, n >= max_evals],
            [_NONFINITE, _CONVERGED, jnp.where(jnp.isfinite(hi), _BUDGET, _NO_RISE)],
            _RUNNING,
        ).astype(jnp.int32)
        pts = jnp.concatenate([jnp.stack([eta, fe])[None], c.pts[:2]])
        return _Line(n, status, lo, flo, hi, fhi, pts, hit)

    c = lax.while_loop(lambda c: c.status == _RUNNING, body, init)
    # the model's root through the final points: on a quadratic exact whatever rounding left
    # in f at a point that met the residual test
    model = jnp.where(c.n == 1, _anchored_root(s, *c.pts[0]), _model_root(s, c))
    ok = jnp.isfinite(model) & (model >= c.lo) & (model <= c.hi)
    eta_c = jnp.where(c.hit & ~ok, c.pts[0, 0], model)
    eta_c = jnp.where((c.status == _CONVERGED) | (c.status == _BUDGET), eta_c, nan)
    return CriticalResult(2 / eta_c, eta_c, (c.lo, c.hi), c.n, c.status == _CONVERGED, c.status)


def _check_options(max_evals, rtol):
    if isinstance(max_evals, bool) or not isinstance(max_evals, int) or max_evals < 2:
        raise ValueError(f"max_evals: must be an int >= 2 (forward passes), got {max_evals!r}")
    if not (isinstance(rtol, float | int) and 0 < rtol < 1):
        raise ValueError(f"rtol: must be a number in (0, 1), got {rtol!r}")


def critical_sharpness(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    params: PyTree,
    direction: PyTree,
    batch: Any,
    /,
    *,
    loss0=None,
    slope=None,
    max_evals: int = 8,
    eta_init=None,
    rtol: float = 1e-3,
) -> CriticalResult:
    """Return ``lambda_c = 2 / eta_c``, the critical sharpness along ``direction``, by line search.

    ``eta_c > 0`` is the smallest step with ``L(theta + eta_c d) = L(theta)``: the step at which
    the update stops decreasing the loss. A bracketing search from ``eta_init`` (quadratic
    models of the loss along the line, safeguarded by extrapolation and bisection) spends at
    most ``max_evals`` forward passes; on a quadratic it is exact after two (the model's root,
    then one pass to confirm it); on a small MLP it took 3 on average when warm-started from
    the previous step's ``eta_c`` and 5-8 from a guess 1 to 4 decades off. It stops
    when the loss at a step is within ``rtol |g^T d| eta`` of ``L0`` (the relative error of
    ``eta_c`` on a quadratic) or the bracket is narrower than ``rtol hi``. Cost: those passes,
    plus one JVP for ``L0`` and the slope ``g^T d`` unless ``loss0`` and ``slope`` are given.
    Runs under ``jit``. The relative critical sharpness is this function on a second data set
    (``batch``) along the update computed on the first. (Kalra et al. 2026, arXiv 2601.16979;
    definitions in docs/conventions.md.)

    Bad input is flagged, never a silent number: an ascent or zero direction, a non-finite
    loss or slope, or a loss that never rose within the budget give a NaN ``value`` and a
    :data:`STATUS` code, eager and jitted alike.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: theta (a pytree of float arrays).
      direction: ``d``, shaped like ``params``: the update at unit learning rate
        (:func:`update_direction`; ``-g`` for GD).
      batch: data passed to ``loss_fn``.
      loss0, slope: ``L(theta)`` and ``g^T d``, if the caller has them (the training step's
        loss and gradient); otherwise one ``jax.jvp`` computes both.
      max_evals: budget of forward passes along the line (>= 2).
      eta_init: first step tried. A good guess saves passes: the previous ``eta_c`` (as
        :func:`critical_sharpness_callback` does) or the learning rate. Default ``1 / |d|``.
      rtol: relative tolerance on ``eta_c``.

    Returns:
      :class:`CriticalResult`.

    Raises:
      ValueError: ``max_evals`` not an int >= 2, ``rtol`` not in (0, 1), ``direction`` not
        shaped like ``params``, a concrete ``eta_init`` that is not finite and positive.

    Example:
      >>> import jax.numpy as jnp
      >>> loss = lambda p, h: 0.5 * jnp.sum(h * p["w"] ** 2)  # H = diag(h)
      >>> h, p = jnp.array([1.0, 3.0]), {"w": jnp.ones(2)}
      >>> res = critical_sharpness(loss, p, {"w": -h}, h)  # GD: d = -g = -(1, 3)
      >>> round(float(res.value), 4), int(res.num_evals)  # g^T H g / g^T g = 28 / 10
      (2.8, 2)
    """
    _check_options(max_evals, rtol)
    tu.check_same_structure(params, direction, ("params", "direction"))
    if eta_init is not None and tu.is_concrete(eta_init):
        e = float(eta_init)
        if not (e > 0 and e < float("inf")):
            raise ValueError(f"eta_init: must be finite and > 0, got {eta_init!r}")
    line = lambda eta: loss_fn(tu.axpy(eta, direction, params), batch)  # noqa: E731
    if loss0 is None or slope is None:
        l0, s0 = jax.jvp(lambda p: loss_fn(p, batch), (params,), (direction,))
        loss0, slope = (l0 if loss0 is None else loss0), (s0 if slope is None else slope)
    eta0 = 1 / tu.norm(direction) if eta_init is None else eta_init
    return _search(lambda eta: line(eta) - loss0, loss0, slope, eta0, max_evals, rtol)


def update_direction(optimizer, grads: PyTree, opt_state, params: PyTree, learning_rate=None):
    """Return ``d = updates / learning_rate``: the optimizer's next update at unit learning rate.

    Calls ``optimizer.update(grads, opt_state, params)`` and discards the new state, so ``d`` is
    the update the optimizer would apply now, from its current state and this gradient (Adam's
    moments with the current gradient folded in, a momentum buffer plus the gradient). Assumes
    the update is proportional to the learning rate (true for optax's ``sgd``, ``adam``,
    ``adamw``, ...; not for clipping after the rate is applied).

    Args:
      optimizer: an optax ``GradientTransformation``.
      grads, opt_state, params: the step's gradient, the optimizer state before the update, theta.
      learning_rate: eta_t, the rate of this update. None: read it from an
        ``inject_hyperparams`` state (``hessian_lab.optim.current_learning_rate``).

    Raises:
      ValueError: a concrete learning rate that is not finite and positive (e.g. None with a
        state that holds no injected rate).
    """
    lr = current_learning_rate(opt_state) if learning_rate is None else learning_rate
    if tu.is_concrete(lr) and not (float(lr) > 0 and float(lr) < float("inf")):
        raise ValueError(
            f"learning_rate: must be finite and > 0, got {learning_rate!r}"
            + (" (the state holds no injected rate)" if learning_rate is None else "")
        )
    updates, _ = optimizer.update(grads, opt_state, params)
    return jax.tree.map(lambda u: (u / lr).astype(u.dtype), updates)


def critical_sharpness_callback(
    loss_fn,
    data=None,
    *,
    optimizer,
    every: int = 1,
    max_evals: int = 8,
    rtol: float = 1e-3,
    relative_data=None,
    name: str = "critical_sharpness",
) -> Callback:
    """Record the critical sharpness ``name`` along the optimizer's next update.

    :class:`StepInfo` carries the optimizer's state but not the optimizer, so the optimizer is
    an argument: the one the step applies. The line search runs along the update ``u`` that
    ``optimizer.update`` returns from the step's gradient and state (= ``eta_t d``), from the
    previous measurement's step (the state) or, at the first one, from ``u`` itself; it finds
    ``eta_t lambda_c = 2 / s_c`` (``u`` at ``s_c`` times its length brings the loss back), and
    ``lambda_c`` needs the rate ``eta_t`` (``StepInfo.learning_rate``, else an injected rate in
    the state; the value is NaN when neither is known). Cost per run: at most ``max_evals``
    forward passes over ``data`` (about 3 when training is smooth), plus one JVP for
    ``L0`` and the slope unless ``data="batch"``.

    Metrics: ``name`` (``lambda_c``), ``{name}_x_lr`` (``eta_t lambda_c``; the GD edge of
    stability is 2), ``{name}_num_evals``, ``{name}_status`` (a :data:`STATUS` code); with
    ``relative_data`` the same four as ``{name}_relative*``: the line search on the loss of
    ``relative_data`` along the same update.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      data: the loss along the line: a fixed dataset; None, the run's training set
        (``StepInfo.data``); ``"batch"``, the step's own batch, whose loss and gradient the step
        already has (free ``L0`` and slope; under full-batch GD that is the training loss).
      optimizer: the optax transformation the step applies.
      every, max_evals, rtol: cadence; as in :func:`critical_sharpness`.
      relative_data: a second dataset for the relative critical sharpness, or None.
      name: metric prefix.

    Raises:
      ValueError: bad ``every``, ``max_evals``, ``rtol`` or ``data``; an optimizer without
        ``update``; a ``StepInfo`` without ``grads`` or ``opt_state``.
    """
    check_every(every)
    _check_options(max_evals, rtol)
    if not hasattr(optimizer, "update"):
        raise ValueError(f"optimizer: expected an optax transformation, got {optimizer!r}")
    if isinstance(data, str) and data != "batch":
        raise ValueError(f"data: must be a dataset, None or 'batch', got {data!r}")
    fdt = jnp.result_type(float)

    def measure(prev, lr, params, u, batch, loss0=None, slope=None):
        eta0 = jnp.where(jnp.isfinite(prev) & (prev > 0), prev, jnp.ones_like(prev))
        line = lambda eta: loss_fn(tu.axpy(eta, u, params), batch)  # noqa: E731
        if loss0 is None or slope is None:
            loss0, slope = jax.jvp(lambda p: loss_fn(p, batch), (params,), (u,))
        res = _search(lambda eta: line(eta) - loss0, loss0, slope, eta0, max_evals, rtol)
        keep = jnp.where(jnp.isfinite(res.eta_c), res.eta_c, prev).astype(fdt)
        return keep, {
            "": jnp.asarray(res.value / lr, fdt),
            "_x_lr": jnp.asarray(res.value, fdt),
            "_num_evals": jnp.asarray(res.num_evals, fdt),
            "_status": jnp.asarray(res.status, fdt),
        }

    def update(state, info: StepInfo):
        if info.grads is None or info.opt_state is None:
            raise ValueError("StepInfo: critical sharpness needs grads and opt_state")
        lr = info.learning_rate
        lr = jnp.asarray(current_learning_rate(info.opt_state) if lr is None else lr, fdt)
        u = optimizer.update(info.grads, info.opt_state, info.params)[0]
        if isinstance(data, str):  # "batch"
            free = info.loss is not None
            loss0, slope = (info.loss, tu.vdot(info.grads, u)) if free else (None, None)
            s, out = measure(state[0], lr, info.params, u, info.batch, loss0, slope)
        else:
            if data is None and info.data is None:
                raise ValueError("data: pass data= to the callback or provide StepInfo.data")
            s, out = measure(state[0], lr, info.params, u, info.data if data is None else data)
        out = {f"{name}{k}": v for k, v in out.items()}
        s_rel = state[1]
        if relative_data is not None:
            s_rel, rel = measure(state[1], lr, info.params, u, relative_data)
            out |= {f"{name}_relative{k}": v for k, v in rel.items()}
        return (s, s_rel), out

    return Callback(lambda params: (jnp.full((), jnp.nan, fdt),) * 2, update, every)
