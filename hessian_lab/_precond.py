"""Adam-preconditioned sharpness: the top eigenvalue of the symmetric ``P^-1/2 H P^-1/2``.

Adam's update is ``theta <- theta - eta P^-1 m`` with ``m`` the EMA of gradients and

    P_t = (1 - beta1^(t+1)) (sqrt(v_{t+1} / (1 - beta2^(t+1))) + eps),

where ``v_{t+1}`` already includes the current gradient (Cohen et al. 2022, arXiv 2207.14484).
The factor ``1 - beta1^(t+1)`` moves the first-moment bias correction into ``P`` so the step is
written with the plain EMA ``m``. ``P^-1 H`` is not symmetric; ``P^-1/2 H P^-1/2`` is, and has the
same eigenvalues, so a symmetric solver (Lanczos) is valid on it.

Stability threshold. Freeze ``P`` and take a quadratic loss. In the coordinates ``z = P^1/2
theta`` and an eigendirection of ``P^-1/2 H P^-1/2`` with eigenvalue ``lambda``, write
``a = eta lambda``. The EMA momentum ``m_{t+1} = beta1 m_t + (1 - beta1) lambda z_t`` and the step
``z_{t+1} = z_t - eta m_{t+1}`` give the recursion ``z_{t+1} = (1 + beta1 - (1 - beta1) a) z_t -
beta1 z_{t-1}``, with characteristic polynomial ``mu^2 - (1 + beta1 - (1 - beta1) a) mu + beta1``.
Its roots leave the unit disc through ``mu = -1`` when ``1 + (1 + beta1 - (1 - beta1) a) + beta1
= 0``, that is at

    eta lambda = (2 + 2 beta1) / (1 - beta1),     = 38 for beta1 = 0.9,

and RMSProp (beta1 = 0) gives the GD threshold 2.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import tree as tu
from ._lanczos import EigResult, top_eigs
from ._operators import Operator
from .optim import ScaleByGIAdamState, gi_adam_nu

__all__ = ["adam_preconditioner", "preconditioned_sharpness", "rmsprop_preconditioner"]

PyTree = Any


def _one_state(opt_state: PyTree, cls: type):
    """The single ``cls`` state inside an optax state; ValueError if there is none or several."""
    found = []
    jax.tree.map(
        lambda s: found.append(s) if isinstance(s, cls) else None,
        opt_state,
        is_leaf=lambda s: isinstance(s, cls),
    )
    if len(found) != 1:
        raise ValueError(
            f"opt_state: must hold exactly one optax.{cls.__name__}, found {len(found)}"
        )
    return found[0]


def _injected(opt_state: PyTree, name: str):
    """Find an injected hyperparameter (optax.inject_hyperparams) by name, or None."""
    holders = []

    def visit(s):
        hp = getattr(s, "hyperparams", None)
        if isinstance(hp, dict) and name in hp:
            holders.append(hp[name])

    jax.tree.map(
        visit, opt_state, is_leaf=lambda s: isinstance(getattr(s, "hyperparams", None), dict)
    )
    return holders[0] if holders else None


def _hyperparams(opt_state: PyTree, **given) -> list:
    """Each given value, or the injected one (optax.inject_hyperparams) where it is None."""
    out = []
    for name, val in given.items():
        if val is None:
            val = _injected(opt_state, name)
            if val is None:
                raise ValueError(
                    f"{name}: not given and not found in an inject_hyperparams state; pass the "
                    "value the optimiser uses"
                )
        out.append(val)
    return out


def rmsprop_preconditioner(
    opt_state: PyTree, grads: PyTree, /, *, decay: float | None = None, eps: float | None = None
) -> PyTree:
    """Return the diagonal ``P`` the next ``optax.rmsprop`` update applies: ``-eta g / P``.

    ``P = sqrt(decay nu + (1 - decay) g^2 + eps)``: optax's RMSProp keeps ``nu`` without bias
    correction and adds ``eps`` inside the square root (``scale_by_rms(eps_in_sqrt=True)``).
    With ``P`` frozen, full-batch stability needs ``eta lambda_max(P^-1 H) < 2``; pass ``P`` to
    :func:`preconditioned_sharpness`.

    Args:
      opt_state: an optax state holding exactly one ``ScaleByRmsState``.
      grads: the current gradient (the one the next update folds into ``nu``).
      decay, eps: RMSProp's hyperparameters; if None, read from ``inject_hyperparams`` state
        (as :func:`hessian_lab.optim.make_optimizer` builds it), else an error.

    Raises:
      ValueError: no or several RMS states, a missing hyperparameter, or ``grads`` whose
        structure differs from the parameters'.
    """
    nu = _one_state(opt_state, optax.ScaleByRmsState).nu
    decay, eps = _hyperparams(opt_state, decay=decay, eps=eps)
    tu.check_same_structure(nu, grads, ("the RMSProp second moment nu", "grads"))
    return jax.tree.map(
        lambda n, g: jnp.sqrt(decay * n + (1 - decay) * g * g + eps).astype(n.dtype), nu, grads
    )


def adam_preconditioner(
    opt_state: PyTree,
    grads: PyTree | None = None,
    /,
    *,
    b1: float | None = None,
    b2: float | None = None,
    eps: float | None = None,
    eps_root: float = 0.0,
) -> PyTree:
    """Return the diagonal preconditioner ``P`` that the *next* Adam update will apply.

    Reads the ``optax.ScaleByAdamState`` (count ``t``, second moment ``nu``) found anywhere in
    ``opt_state`` (plain, chained or ``inject_hyperparams``-wrapped) and returns
    ``P = (1 - b1^(t+1)) (sqrt(v_{t+1} / (1 - b2^(t+1)) + eps_root) + eps)`` with
    ``v_{t+1} = b2 nu + (1 - b2) g^2`` for the current gradient ``g = grads``. With the
    preconditioned step ``-eta P^-1 m``, full-batch stability needs
    ``eta lambda_max(P^-1 H) < (2 + 2 b1) / (1 - b1)`` (38 for ``b1 = 0.9``).

    Args:
      opt_state: an optax state holding exactly one ``ScaleByAdamState``.
      grads: the current gradient (the one the next update will fold into ``nu``). If None,
        ``nu`` and ``count`` are taken as already including it (``t + 1 = count >= 1``). For
        GI-Adam (:func:`hessian_lab.optim.scale_by_gi_adam`) at step 0 with ``nu`` not yet
        set, ``nu = grads**2`` first, as its update does.
      b1, b2, eps: Adam's hyperparameters; if None, read from ``inject_hyperparams`` state,
        else an error (silently assuming defaults would give wrong numbers).
      eps_root: optax's ``eps_root`` (default 0).

    Raises:
      ValueError: no or several Adam states, a missing hyperparameter, or ``grads`` whose
        structure differs from the parameters'.
    """
    state = _one_state(opt_state, optax.ScaleByAdamState)
    b1, b2, eps = _hyperparams(opt_state, b1=b1, b2=b2, eps=eps)
    if grads is None:
        v, t1 = state.nu, state.count
    else:
        tu.check_same_structure(state.nu, grads, ("the Adam second moment nu", "grads"))
        nu = gi_adam_nu(state, grads) if isinstance(state, ScaleByGIAdamState) else state.nu
        v = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * g * g, nu, grads)
        t1 = state.count + 1
    t1 = jnp.asarray(t1, jnp.result_type(float))
    c1 = 1 - jnp.asarray(b1) ** t1
    c2 = 1 - jnp.asarray(b2) ** t1
    return jax.tree.map(lambda x: (c1 * (jnp.sqrt(x / c2 + eps_root) + eps)).astype(x.dtype), v)


def preconditioned_sharpness(
    matvec,
    precond: PyTree,
    v0: PyTree,
    /,
    *,
    k: int = 1,
    num_iters: int = 20,
    exact_residuals: bool = True,
) -> EigResult:
    """Return the top-``k`` eigenpairs of ``P^-1/2 H P^-1/2`` for a diagonal ``P``, by Lanczos.

    The symmetric form has the eigenvalues of ``P^-1 H``; eigenvectors are returned in the
    whitened coordinates (``P^1/2`` times those of ``P^-1 H``). Cost: as
    :func:`hessian_lab.top_eigs`: ``num_iters`` matvecs, plus ``k`` for the residuals unless
    ``exact_residuals=False``.

    Args:
      matvec: the Hessian operator ``v -> H v`` (e.g. :func:`hessian_lab.full_data_hvp`).
      precond: diagonal ``P`` as a pytree like the parameters, all entries positive (e.g. from
        :func:`adam_preconditioner`; a frozen or any other diagonal preconditioner works too).
      v0: start vector; ``k``, ``num_iters``, ``exact_residuals`` as in
        :func:`hessian_lab.top_eigs`.

    Raises:
      ValueError: ``precond`` does not match ``v0`` or (when concrete) is not positive and finite.
    """
    tu.check_same_structure(v0, precond, ("v0", "precond"))
    tu.check_finite(precond, "precond")
    leaves = jax.tree.leaves(precond)
    if tu.is_concrete(precond) and not all(np.all(np.asarray(p) > 0) for p in leaves):
        raise ValueError("precond: every entry of the diagonal preconditioner must be positive")
    inv_sqrt = jax.tree.map(lambda p: 1.0 / jnp.sqrt(p), precond)
    mul = lambda a, b: jax.tree.map(jnp.multiply, a, b)  # noqa: E731
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), v0)
    op = Operator(lambda v: mul(inv_sqrt, matvec(mul(inv_sqrt, v))), like, "preconditioned")
    return top_eigs(op, v0, k=k, num_iters=num_iters, exact_residuals=exact_residuals)
