"""Convolutions inside loop bodies in the layout XLA:CPU runs fast.

XLA:CPU (jax 0.10) runs a convolution with its library (Eigen) kernel only when the convolution
is in one canonical layout: input (batch, spatial..., feature), kernel (spatial..., in, out),
output (batch, spatial..., feature). Its canonicalisation pass, which transposes any other
convolution into that layout, rewrites the program's top level only. The convolutions that
autodiff creates (the input gradient with a transposed kernel, the kernel gradient with batch
and feature swapped) are not canonical, so inside a loop body (``lax.scan``, ``fori_loop``,
``while_loop``, ``lax.map``) they are compiled as generic loop nests: a CNN's Hessian-vector
product ran 8-13x slower in a Lanczos or chunk loop than alone.

:func:`in_loop` wraps a function called inside a loop body so that, when traced on CPU, every
non-canonical convolution of its jaxpr is written as transposes around a canonical convolution,
which is what the top-level pass would have done. The result is the same function (the same
numbers: only the layout differs); GPUs and functions without convolutions are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_layouts", "in_loop", "is_canonical"]

_INLINED = ("pjit", "jit", "closed_call", "core_call")  # calls whose body is evaluated in place


def _canonical_specs(nd: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The specs (``ConvDimensionNumbers``) of the layout above for ``nd`` spatial dims."""
    io = (0, nd + 1, *range(1, nd + 1))
    return io, (nd + 1, nd, *range(nd)), io


def is_canonical(dimension_numbers: Any) -> bool:
    """Whether a ``conv_general_dilated``'s dimension numbers are XLA:CPU's library layout."""
    dn = dimension_numbers
    lhs, rhs, out = _canonical_specs(len(dn.lhs_spec) - 2)
    return tuple(dn.lhs_spec) == lhs and tuple(dn.rhs_spec) == rhs and tuple(dn.out_spec) == out


def _canonical_conv(lhs: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """The convolution of ``params`` on ``lhs``, ``rhs``, computed in the canonical layout."""
    dn = params["dimension_numbers"]
    ls, rs, os_ = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    nd = len(ls) - 2
    lhs_t = jnp.transpose(lhs, (ls[0], *ls[2:], ls[1]))
    rhs_t = jnp.transpose(rhs, (*rs[2:], rs[1], rs[0]))
    canon = lax.ConvDimensionNumbers(*_canonical_specs(nd))
    out = lax.conv_general_dilated_p.bind(lhs_t, rhs_t, **dict(params, dimension_numbers=canon))
    back = [0] * (nd + 2)  # canonical output axis each axis of the requested layout comes from
    back[os_[0]], back[os_[1]] = 0, nd + 1
    for i, axis in enumerate(os_[2:]):
        back[axis] = 1 + i
    return jnp.transpose(out, back)


def _needs_rewrite(jaxpr: Any) -> bool:
    """Whether ``jaxpr`` (or a call inlined by :func:`_evaluate`) has a non-canonical conv."""
    for eqn in jaxpr.eqns:
        if eqn.primitive is lax.conv_general_dilated_p:
            if not is_canonical(eqn.params["dimension_numbers"]):
                return True
        elif eqn.primitive.name in _INLINED and _needs_rewrite(_call_body(eqn).jaxpr):
            return True
    return False


def _call_body(eqn: Any) -> Any:
    """The closed jaxpr a call equation (``pjit``, ``closed_call``, ...) evaluates."""
    body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return body if isinstance(body, jex.ClosedJaxpr) else jex.ClosedJaxpr(body, ())


def _evaluate(jaxpr: Any, consts: list, args: list) -> list:
    """Evaluate ``jaxpr`` under the current trace with its convolutions made canonical.

    Calls (``jit`` inside the function) whose bodies hold such a convolution are evaluated in
    place; every other equation is bound as it is, including nested loops and custom-derivative
    calls (a convolution inside those keeps its layout).
    """
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        if prim is lax.conv_general_dilated_p and not is_canonical(eqn.params["dimension_numbers"]):
            outs = [_canonical_conv(*ins, eqn.params)]
        elif prim.name in _INLINED and _needs_rewrite(_call_body(eqn).jaxpr):
            body = _call_body(eqn)
            outs = _evaluate(body.jaxpr, body.consts, ins)
        else:
            with eqn.ctx.manager:
                outs = prim.bind(*ins, **prim.get_bind_params(eqn.params))
            outs = outs if prim.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def in_loop(fn: Callable) -> Callable:
    """``fn`` with its convolutions in XLA:CPU's library layout, for use inside a loop body.

    Traced on CPU, ``fn`` is turned into a jaxpr once per call site and, if it holds a
    non-canonical convolution, evaluated with each such convolution as transposes around a
    canonical one (module docstring). Otherwise, on other backends, or when called on concrete
    arrays (outside any trace, where no loop body is being compiled), ``fn`` is called as it is.
    Same values as ``fn``; differentiable and vmappable like it.
    """
    if getattr(fn, "_conv_layout_in_loop", False):
        return fn

    def wrapped(*args: Any) -> Any:
        leaves = jax.tree.leaves(args)
        traced = any(isinstance(x, jax.core.Tracer) for x in leaves)
        if not traced or jax.default_backend() != "cpu":
            return fn(*args)
        closed, out = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not _needs_rewrite(closed.jaxpr):
            flat = jex.jaxpr_as_fun(closed)(*leaves)
        else:
            flat = _evaluate(closed.jaxpr, list(closed.consts), leaves)
        return jax.tree.unflatten(jax.tree.structure(out), flat)

    wrapped._conv_layout_in_loop = True
    return wrapped


def conv_layouts(hlo_text: str) -> set[str]:
    """The layouts (``dim_labels``) of the convolutions in compiled HLO text.

    For tests and benchmarks: on CPU, a product whose loop bodies went through :func:`in_loop`
    shows only canonical ones (``b01f_01io->b01f`` for 2-D convolutions).
    """
    return set(re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo_text))
