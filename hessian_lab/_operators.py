"""Matrix-free curvature operators: Hessian, GGN and NTK products over parameter pytrees.

These are the only functions that see models, losses and data. Each returns an
:class:`Operator`: a callable ``v -> A v`` on pytrees that also records the shape of its input
(``like``), so estimators can check a start vector before any tracing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from . import tree as tu
from ._conv_layout import in_loop

__all__ = [
    "Operator",
    "check_deterministic",
    "ggn",
    "hvp",
    "linearized_hvp",
    "ntk",
    "restrict",
]

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Operator:
    """A symmetric linear operator on pytrees: ``op(v)`` returns ``A v``.

    Attributes:
      fn: the product ``v -> A v``.
      like: a pytree of ``jax.ShapeDtypeStruct`` describing valid inputs ``v``.
      name: what the operator is, for error messages.
    """

    fn: Callable[[PyTree], PyTree]
    like: PyTree
    name: str = "operator"

    def __call__(self, v: PyTree) -> PyTree:
        # in a loop body (Lanczos, a user's fori_loop) a CNN's product stays fast on CPU
        return in_loop(self.fn)(v)


def shape_struct(tree: PyTree) -> PyTree:
    """Return the ``ShapeDtypeStruct`` skeleton of a pytree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def all_finite(tree: PyTree) -> jax.Array:
    """A scalar bool: every floating leaf of ``tree`` is finite (traceable)."""
    oks = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(oks)) if oks else jnp.asarray(True)


def poison(product: PyTree, ok: jax.Array) -> PyTree:
    """Turn ``product`` into NaN unless ``ok``: a curvature product at a point where the loss
    (or its gradient, or the model's outputs) is not finite is not a number, and must not look
    like one (a NaN loss with MSE has a finite ``X^T X`` Hessian). Estimators then flag or
    raise on the non-finite product."""
    scale = jnp.where(ok, 1.0, jnp.nan)
    return jax.tree.map(lambda x: x * scale.astype(x.dtype), product)


def hvp(loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any) -> Operator:
    """Return the Hessian-vector product ``v -> H v`` of ``loss_fn(params, batch)`` at ``params``.

    Forward-over-reverse: ``jvp(grad(loss))``, one product costing about two gradients. Where
    the loss or its gradient at ``params`` is NaN or inf, every product is NaN (estimators then
    raise or flag it), never a finite number.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, e.g. the mean loss over the batch.
      params: the point at which the Hessian is taken (any pytree of float arrays).
      batch: data passed through to ``loss_fn`` unchanged.

    Raises:
      ValueError: ``params`` holds NaN or inf (checked when concrete).

    Example:
      >>> import jax.numpy as jnp
      >>> op = hvp(lambda p, b: jnp.sum(p["w"] ** 4), {"w": jnp.ones(2)}, None)
      >>> op({"w": jnp.array([1.0, 0.0])})["w"].tolist()
      [12.0, 0.0]
    """
    tu.check_finite(params, "params")
    value_and_grad = jax.value_and_grad(lambda p: loss_fn(p, batch))

    def matvec(v: PyTree) -> PyTree:
        (loss, g), (_, hv) = jax.jvp(value_and_grad, (params,), (v,))
        return poison(hv, jnp.isfinite(loss) & all_finite(g))

    return Operator(matvec, shape_struct(params), "hvp")


def linearized_hvp(
    loss_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, batch: Any
) -> Operator:
    """Return ``v -> H v`` with the gradient linearised once and reused for every product.

    ``jax.linearize`` evaluates the forward pass once and stores the linear map's residuals, so
    each further product is a pure linear evaluation: cheaper per product than :func:`hvp`, at
    the cost of memory for the stored intermediates. Same arguments as :func:`hvp`; products
    are NaN where the loss or its gradient is not finite, as for :func:`hvp`.
    """
    tu.check_finite(params, "params")
    (loss, g), lin = jax.linearize(jax.value_and_grad(lambda p: loss_fn(p, batch)), params)
    ok = jnp.isfinite(loss) & all_finite(g)
    return Operator(lambda v: poison(lin(v)[1], ok), shape_struct(params), "linearized_hvp")


def ggn(
    apply_fn: Callable[[PyTree, Any], jax.Array],
    output_loss: Callable[[jax.Array, Any], jax.Array],
    params: PyTree,
    x: Any,
    y: Any,
) -> Operator:
    """Return the generalised Gauss-Newton product ``v -> J^T H_out J v``.

    ``J`` is the Jacobian of ``apply_fn(params, x)`` with respect to ``params`` and ``H_out`` the
    Hessian of ``output_loss(outputs, y)`` with respect to the outputs. The GGN is PSD for convex
    output losses (MSE, cross-entropy). Cost: one JVP, one output-space HVP and one VJP.

    Args:
      apply_fn: ``apply_fn(params, x) -> outputs``.
      output_loss: ``output_loss(outputs, y) -> scalar`` (the loss as a function of outputs).
      params: the linearisation point.
      x, y: inputs and targets.
    """
    tu.check_finite(params, "params")
    f = lambda p: apply_fn(p, x)  # noqa: E731
    out, vjp_fn = jax.vjp(f, params)
    out_value_and_grad = jax.value_and_grad(lambda o: output_loss(o, y))

    def matvec(v: PyTree) -> PyTree:
        jv = jax.jvp(f, (params,), (v,))[1]
        (loss, _), (_, hjv) = jax.jvp(out_value_and_grad, (out,), (jv,))
        return poison(vjp_fn(hjv)[0], jnp.isfinite(loss) & all_finite(out))

    return Operator(matvec, shape_struct(params), "ggn")


def ntk(apply_fn: Callable[[PyTree, Any], jax.Array], params: PyTree, x: Any) -> Operator:
    """Return the NTK product in output space, ``u -> J J^T u`` (not divided by n).

    ``u`` has the shape of ``apply_fn(params, x)``. A VJP (``J^T u``) followed by a JVP, as in
    neural-tangents' ``ntk_vector_products``. Cost: one VJP and one JVP. Products are NaN where
    the outputs are not finite.
    """
    tu.check_finite(params, "params")
    f = lambda p: apply_fn(p, x)  # noqa: E731
    out, vjp_fn = jax.vjp(f, params)

    def matvec(u: jax.Array) -> jax.Array:
        return poison(jax.jvp(f, (params,), vjp_fn(u))[1], all_finite(out))

    return Operator(matvec, shape_struct(out), "ntk")


def restrict(
    matvec: Callable[[PyTree], PyTree], params: PyTree, keys: Sequence[Hashable]
) -> tuple[Operator, dict]:
    """Restrict an operator on a dict of parameters to the block ``params[k] for k in keys``.

    The block operator is ``P A P^T`` with ``P`` selecting the block: products embed the block
    vector with zeros elsewhere and keep only the block of the result. Use it for per-layer
    spectra: ``op, block = restrict(H, params, ["l0"])`` then ``top_eigs(op, block)``.

    Returns:
      ``(block_operator, block_params)``, where ``block_params`` is the sub-dict (use it as a
      template for start vectors).

    Raises:
      ValueError: ``params`` is not a dict, or a key is missing (the error lists the keys).

    Example:
      >>> import jax.numpy as jnp
      >>> p = {"a": jnp.ones(2), "b": jnp.ones(3)}
      >>> op, sub = restrict(lambda v: v, p, ["a"])
      >>> op({"a": jnp.arange(2.0)})["a"].tolist()
      [0.0, 1.0]
    """
    if not isinstance(params, dict):
        raise ValueError(f"params: restrict needs a dict of parameter blocks, got {type(params)}")
    keys = list(keys)
    missing = [k for k in keys if k not in params]
    if missing or not keys:
        raise ValueError(
            f"keys: must be a non-empty subset of the parameter blocks {sorted(map(str, params))}, "
            f"got {keys}"
        )
    block = {k: params[k] for k in keys}

    def sub_matvec(v: dict) -> dict:
        full = {k: (v[k] if k in block else tu.zeros_like(val)) for k, val in params.items()}
        out = matvec(full)
        return {k: out[k] for k in keys}

    return Operator(sub_matvec, shape_struct(block), f"restrict({keys})"), block


def check_deterministic(
    matvec: Callable[[PyTree], PyTree], v: PyTree, *, rtol: float = 1e-6
) -> None:
    """Apply an operator twice to the same vector; raise if the products differ.

    Catches operators that are not fixed linear maps: a loss that draws a new dropout mask
    at every call (an nnx module used as a live object in train mode advances its RNG stream;
    a numpy or Python RNG), shuffled or resampled data inside the loss. A train-mode BatchNorm
    is a fixed function of the batch in JAX and passes; :func:`hessian_lab.curvature_loss`
    builds a loss with dropout off and BatchNorm statistics chosen (``mode="train"|"eval"``).

    Raises:
      ValueError: the two products differ by more than ``rtol`` relative.
    """
    a = matvec(v)
    b = matvec(v)
    diff = float(tu.norm(tu.sub(a, b)))
    size = float(tu.norm(a))
    if not diff <= rtol * max(size, 1e-30):
        raise ValueError(
            "matvec: two applications to the same vector differ "
            f"(relative difference {diff / max(size, 1e-30):.3g} > rtol={rtol}); the operator is "
            "not deterministic: the loss changes between calls, typically dropout drawing a new "
            "mask each time (an nnx module called in train mode, a numpy or Python RNG) or "
            "resampled data. Measure with dropout off: build the loss with "
            "hessian_lab.curvature_loss (BatchNorm by mode='train' or 'eval'), and fix the data."
        )
