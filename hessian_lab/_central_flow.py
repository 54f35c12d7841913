"""The central flow of gradient descent: the time-averaged trajectory at the edge of stability.

Cohen, Damian, Talwalkar, Kolter & Lee, "Understanding Optimization in Deep Learning with
Central Flows" (arXiv 2410.24206). At the edge of stability GD oscillates along the top Hessian
eigenvectors while the sharpness hovers at ``2/eta``. Write the iterate as a centre plus an
oscillation, ``w_t = w(t) + V x_t`` (``V``: the eigenvectors at the edge), and average the
gradient over the oscillation with ``E[x x^T] = X``:
``E[grad L(w + V x)] = grad L(w) + 1/2 grad <Sigma, H(w)> + O(|x|^3)``, ``Sigma = V X V^T``.
The central flow is the ODE that follows this average (``t`` in steps; gradient-flow time is
``eta t``)::

    dw/dt = -eta [grad L(w) + 1/2 sum_ij X_ij t_ij],   t_ij = grad_w (v_i^T H(w) v_j),

with ``X`` (k x k, PSD) chosen so that ``V^T H V`` never exceeds ``2/eta``. With one eigenvalue
at the edge and ``dS/dt = 0``: ``X = sigma^2 = max(0, -2 <grad S, grad L> / |grad S|^2)``.

Discretisation (the stiffness): explicit Euler with a step ``dt`` (in GD steps). Imposing
``dS/dt <= 0`` only where ``S = 2/eta`` lets the sharpness drift above ``2/eta`` by the Euler
error of every step; instead ``X`` is chosen so that the *next* value of
``M = V^T H V`` (to first order) is ``<= 2/eta``, exactly as in the paper's integrator:

    X >= 0,  Y = (2/eta I - M) / (eta dt) + A + 1/2 B(X) >= 0,  <X, Y> = 0,

``A_ij = <t_ij, grad L>`` and ``B(X)_ij = sum_ab <t_ij, t_ab> X_ab``. An overshoot left by one
step enters the next as a negative ``2/eta - M`` and is pulled back (a projection onto
``S <= 2/eta``), and eigenvalues far below the edge get a large positive offset, so ``X``
leaves them alone: the k tracked eigenvalues need no threshold to decide which are "at the
edge". ``B`` is a Gram map (PSD), so the complementarity problem is the optimality condition of
the convex program ``min_{X >= 0} <C, X> + 1/4 <X, B(X)>``, which :func:`solve_sdcp` solves by
projected accelerated gradient. Since ``1/4 <X, B X> + <A, X> = |g + 1/2 sum X t|^2 - |g|^2``,
the flow takes, among the PSD oscillations, the one that leaves the smallest velocity: it is
gradient flow projected onto the stable set ``{S <= 2/eta}``.

The predicted (time-averaged) GD loss is ``L(w) + 1/2 <X, M>`` (``L + sigma^2 S / 2``, i.e.
``L + sigma^2 / eta`` at the edge).

Cost per flow step: one gradient, ``num_iters`` Hessian-vector products (Lanczos, warm-started
from the previous eigenvectors) and ``k (k + 1) / 2`` third-derivative products (a gradient of
an HVP, about three gradients each).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import tree as tu
from ._conv_layout import in_loop
from ._lanczos import top_eigs
from ._operators import hvp

__all__ = ["CentralFlow", "FlowInfo", "FlowState", "gd_central_flow", "solve_sdcp"]

PyTree = Any


def solve_sdcp(offset: jax.Array, gram: jax.Array, /, *, num_iters: int = 500) -> jax.Array:
    """Solve the k x k semidefinite complementarity problem of the central flow.

    Finds ``X`` with ``X >= 0``, ``Y = offset + 1/2 B(X) >= 0`` and ``<X, Y> = 0`` (PSD order),
    where ``B(X)_ij = sum_ab gram[i, j, a, b] X_ab`` is PSD as a map on symmetric matrices (a
    Gram tensor ``<t_ij, t_ab>``). These are the optimality conditions of the convex program
    ``min_{X >= 0} <offset, X> + 1/4 <X, B(X)>``, solved here by FISTA (projected gradient with
    Nesterov momentum and an adaptive restart) with the step ``2 / lambda_max(B)``; each
    iteration projects onto the PSD cone by one ``k x k`` eigendecomposition. With ``k = 1`` it
    is ``max(0, -2 offset / gram)``.

    Args:
      offset: ``(k, k)`` symmetric.
      gram: ``(k, k, k, k)``, symmetric in ``(i, j)``, in ``(a, b)`` and between the pairs.
      num_iters: iterations (fixed, so it runs under ``jit``); the KKT residual falls like
        ``1 / num_iters^2`` or faster.

    Returns:
      ``X``, ``(k, k)`` symmetric PSD. If ``B`` vanishes along a direction with a negative
      offset the program is unbounded; ``X`` then grows with ``num_iters`` (not detected).
    """
    k = offset.shape[0]
    C = 0.5 * (offset + offset.T)
    G = gram.reshape(k * k, k * k)
    G = 0.5 * (G + G.T)
    lip = 0.5 * jnp.linalg.eigvalsh(G)[-1]
    tiny = jnp.finfo(C.dtype).tiny ** 0.5
    step = 1.0 / jnp.maximum(lip, tiny)

    def grad(X):
        return C + 0.5 * (G @ X.reshape(-1)).reshape(k, k)

    def project(X):
        lam, U = jnp.linalg.eigh(0.5 * (X + X.T))
        return (U * jnp.maximum(lam, 0.0)[None, :]) @ U.T

    def body(_, carry):
        X, Z, s = carry
        X_new = project(Z - step * grad(Z))
        # O'Donoghue & Candes' gradient restart: drop the momentum when it points uphill
        restart = jnp.vdot(Z - X_new, X_new - X) > 0
        s_new = jnp.where(restart, 1.0, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * s * s)))
        mom = jnp.where(restart, 0.0, (s - 1.0) / s_new)
        return X_new, X_new + mom * (X_new - X), s_new

    X0 = jnp.zeros_like(C)
    one = jnp.ones((), C.dtype)
    X, _, _ = jax.lax.fori_loop(0, num_iters, body, (X0, X0, one))
    return X


class FlowState(NamedTuple):
    """Where the flow is: ``params`` and the ``vectors`` (leading axis k) that warm-start Lanczos."""

    params: PyTree
    vectors: PyTree


class FlowInfo(NamedTuple):
    """What one flow step measured at its start point (before moving).

    Attributes:
      loss: ``L(w)``.
      predicted_loss: ``L(w) + 1/2 <X, M>``: the time-averaged GD loss the flow predicts.
      eigenvalues: ``(k,)`` top Hessian eigenvalues, descending (``eigenvalues[0]`` = sharpness).
      X: ``(k, k)`` the oscillation covariance in the eigenvector basis (``trace X`` =
        ``E|x|^2``; ``sigma^2`` when one eigenvalue is at the edge).
      grad_norm: ``|grad L(w)|``. speed: ``|dw/dt| / eta``.
      num_matvecs: Hessian-vector products of this step (Lanczos and its residuals).
    """

    loss: jax.Array
    predicted_loss: jax.Array
    eigenvalues: jax.Array
    X: jax.Array
    grad_norm: jax.Array
    speed: jax.Array
    num_matvecs: jax.Array


class CentralFlow(NamedTuple):
    """``init(params, key) -> FlowState``; ``step(state, batch, lr) -> (FlowState, FlowInfo)``."""

    init: Callable[..., FlowState]
    step: Callable[..., tuple[FlowState, FlowInfo]]


def _pairs(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upper-triangle pairs (i <= j) and the k x k table of each pair's index."""
    i, j = np.triu_indices(k)
    index = np.zeros((k, k), np.int32)
    index[i, j] = index[j, i] = np.arange(i.size)
    return i, j, index


def third_derivatives(loss_fn, params: PyTree, batch: Any, vectors: PyTree) -> PyTree:
    """``t_ij = grad_w (v_i^T H(w) v_j)`` for the pairs ``i <= j`` (leading axis k(k+1)/2).

    Reverse over forward-over-reverse: one gradient of a Hessian-vector product per pair.
    """
    k = jax.tree.leaves(vectors)[0].shape[0]
    i, j, _ = _pairs(k)
    take = lambda idx: jax.tree.map(lambda a: a[idx], vectors)  # noqa: E731

    def one(vi, vj):
        def quad(w):
            return tu.vdot(vi, hvp(loss_fn, w, batch)(vj))

        return jax.grad(quad)(params)

    return jax.lax.map(in_loop(lambda pair: one(*pair)), (take(i), take(j)))  # fast convs on CPU


def gd_central_flow(
    loss_fn: Callable[[PyTree, Any], jax.Array],
    *,
    dt: float,
    k: int = 3,
    num_iters: int = 20,
    sdcp_iters: int = 500,
) -> CentralFlow:
    """Return the central flow of full-batch GD on ``loss_fn``, integrated by Euler steps.

    ``step(state, batch, lr)`` moves the flow by ``dt`` GD steps (flow time ``lr * dt``): it
    measures the top-``k`` eigenpairs of ``H`` by Lanczos (``hessian_lab.top_eigs`` over
    ``hessian_lab.hvp``, warm-started from the sum of the previous eigenvectors), the
    third-derivative vectors ``t_ij``, solves the complementarity problem that keeps the next
    ``V^T H V <= 2/lr`` (:func:`solve_sdcp`; see the module docstring for the derivation) and
    takes ``w <- w - dt lr [grad L + 1/2 sum_ij X_ij t_ij]``. ``lr`` is an argument, so one
    compiled step serves every learning rate. Below the edge ``X = 0``: Euler on gradient flow
    ``dw/dt = -lr grad L``, stable (and non-oscillating) for ``dt <= 1/2``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the full-batch loss.
      dt: the Euler step in GD steps (the paper's ``t``); ``0 < dt``, ``<= 1/2`` advised.
      k: eigenpairs tracked; their count at the edge at once must stay below ``k``.
      num_iters: Lanczos iterations per step (``k <= num_iters <= number of parameters``).
      sdcp_iters: iterations of :func:`solve_sdcp`.

    Raises:
      ValueError: ``dt`` not positive, ``k``/``num_iters``/``sdcp_iters`` not ints in range.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> loss = lambda p, b: 0.5 * p["y"][0] * p["x"][0] ** 2 - p["y"][0]
      >>> flow = gd_central_flow(loss, dt=0.5, k=1, num_iters=2)
      >>> s = flow.init({"x": jnp.zeros(1), "y": jnp.array([3.0])}, jax.random.key(0))
      >>> step = jax.jit(flow.step)  # compiles in seconds: run in tests/test_central_flow.py
      >>> for _ in range(8):  # doctest: +SKIP
      ...     s, info = step(s, None, 0.5)
      >>> round(float(s.params["y"][0]), 3), round(float(info.X[0, 0]), 3)  # doctest: +SKIP
      (4.0, 2.0)
    """
    if not (isinstance(dt, int | float) and not isinstance(dt, bool) and np.isfinite(dt)):
        raise ValueError(f"dt: must be a finite number > 0, got {dt!r}")
    if dt <= 0:
        raise ValueError(f"dt: must be a finite number > 0, got {dt!r}")
    for name, v, lo in (("k", k, 1), ("num_iters", num_iters, k), ("sdcp_iters", sdcp_iters, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name}: must be an int >= {lo}, got {v!r}")
    _, _, index = _pairs(k)
    sym = np.where(np.eye(k, dtype=bool), 1.0, 2.0)  # off-diagonal pairs appear twice in sum_ij

    def init(params: PyTree, key: jax.Array) -> FlowState:
        keys = jax.random.split(key, k)
        vecs = [tu.normalize(tu.random_like(kk, params)) for kk in keys]
        return FlowState(params, jax.tree.map(lambda *xs: jnp.stack(xs), *vecs))

    def step(state: FlowState, batch: Any, lr) -> tuple[FlowState, FlowInfo]:
        w = state.params
        loss, g = jax.value_and_grad(loss_fn)(w, batch)
        v0 = jax.tree.map(lambda a: jnp.sum(a, axis=0), state.vectors)
        eig = top_eigs(hvp(loss_fn, w, batch), v0, k=k, num_iters=num_iters, check_iters=0)
        lam, V = eig.values, eig.vectors
        T = third_derivatives(loss_fn, w, batch, V)  # leading axis k(k+1)/2
        flat = jax.vmap(lambda t: jnp.concatenate([a.ravel() for a in jax.tree.leaves(t)]))(T)
        g_flat = jnp.concatenate([a.ravel() for a in jax.tree.leaves(g)])
        gram_pairs, a_pairs = flat @ flat.T, flat @ g_flat
        gram = gram_pairs[index[:, :, None, None], index[None, None, :, :]]
        lr = jnp.asarray(lr, lam.dtype)
        offset = jnp.diag(2.0 / lr - lam) / (lr * dt) + a_pairs[index]
        X = solve_sdcp(offset, gram, num_iters=sdcp_iters)
        coef = (X * sym)[np.triu_indices(k)]  # sum_ij X_ij t_ij over the pairs i <= j
        push = jax.tree.map(lambda t: jnp.tensordot(coef, t, axes=1), T)
        vel = jax.tree.map(lambda gi, pi: -(gi + 0.5 * pi), g, push)  # dw/dt / lr
        new = jax.tree.map(lambda p, v: p + (dt * lr) * v, w, vel)
        info = FlowInfo(
            loss=loss,
            predicted_loss=loss + 0.5 * jnp.sum(jnp.diag(X) * lam),
            eigenvalues=lam,
            X=X,
            grad_norm=tu.norm(g),
            speed=tu.norm(vel),
            num_matvecs=eig.num_matvecs,
        )
        return FlowState(new, V), info

    return CentralFlow(init, step)
