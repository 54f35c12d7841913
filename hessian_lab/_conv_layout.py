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

:func:`convs_as_matmuls` goes further for a function whose convolutions are slow on CPU even in
that layout (XLA:CPU's kernels, and above all the kernel and input gradients autodiff derives from
them): it writes each convolution as one matrix product of strided slices of its padded input
(im2col), so that autodiff of the wrapped function makes only matrix products, pads and slices.
Same function, summed in another order (float rounding); ``k`` times the input's memory for a
kernel of ``k`` taps.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
from jax import lax

from ._stateful import CurvatureLoss, StatefulLoss

__all__ = ["conv_layouts", "convs_as_matmuls", "in_loop", "is_canonical"]

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
    return _from_canonical(out, os_)


def _from_canonical(out: jax.Array, out_spec: tuple[int, ...]) -> jax.Array:
    """A canonical ``(batch, spatial..., feature)`` output transposed into ``out_spec``."""
    nd = len(out_spec) - 2
    back = [0] * (nd + 2)  # canonical output axis each axis of the requested layout comes from
    back[out_spec[0]], back[out_spec[1]] = 0, nd + 1
    for i, axis in enumerate(out_spec[2:]):
        back[axis] = 1 + i
    return jnp.transpose(out, back)


def _rewrite_layout(eqn: Any) -> Callable | None:
    """:func:`in_loop`'s rewrite of one equation: a non-canonical convolution, or nothing."""
    if eqn.primitive is lax.conv_general_dilated_p and not is_canonical(
        eqn.params["dimension_numbers"]
    ):
        return lambda lhs, rhs: _canonical_conv(lhs, rhs, eqn.params)
    return None


def _as_matmul_shape(lhs_shape, rhs_shape, params: dict) -> tuple[int, ...] | None:
    """The output's spatial sizes if :func:`_matmul_conv` can compute this convolution, else None.

    It can unless the convolution is grouped, has a dilated input (a transposed convolution), or
    has an empty output.
    """
    if params["feature_group_count"] != 1 or params["batch_group_count"] != 1:
        return None
    if any(d != 1 for d in params["lhs_dilation"]):
        return None
    dn = params["dimension_numbers"]
    sizes = []
    for d, (lo, hi) in enumerate(params["padding"]):
        n_in, k = lhs_shape[dn.lhs_spec[2 + d]], rhs_shape[dn.rhs_spec[2 + d]]
        span = (k - 1) * params["rhs_dilation"][d] + 1
        sizes.append((n_in + lo + hi - span) // params["window_strides"][d] + 1)
    return tuple(sizes) if min(sizes, default=1) >= 1 else None


def _matmul_conv(lhs: jax.Array, rhs: jax.Array, params: dict) -> jax.Array:
    """The convolution of ``params`` as one matrix product of strided slices of the input."""
    dn = params["dimension_numbers"]
    ls, rs = dn.lhs_spec, dn.rhs_spec
    nd = len(ls) - 2
    out_size = _as_matmul_shape(lhs.shape, rhs.shape, params)
    x = jnp.transpose(lhs, (ls[0], *ls[2:], ls[1]))  # (batch, spatial..., in)
    w = jnp.transpose(rhs, (*rs[2:], rs[1], rs[0]))  # (taps..., in, out)
    pads = [(0, 0, 0), *((lo, hi, 0) for lo, hi in params["padding"]), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), pads)  # lax.pad: negative padding crops, as in a conv
    strides, dilation = params["window_strides"], params["rhs_dilation"]
    cols = []
    for tap in itertools.product(*(range(k) for k in w.shape[:nd])):
        start = [t * r for t, r in zip(tap, dilation, strict=True)]
        stop = [a + s * (m - 1) + 1 for a, s, m in zip(start, strides, out_size, strict=True)]
        cols.append(
            lax.slice(x, (0, *start, 0), (x.shape[0], *stop, x.shape[-1]), (1, *strides, 1))
        )
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # (tap, in) order
    # One 2-D product over (batch x positions) rows: its transpose, the kernel's gradient, is
    # then a 2-D product too (contracting three axes at once ran 2-7x slower on XLA:CPU).
    out = lax.dot_general(
        patches.reshape(-1, patches.shape[-1]),
        w.reshape(-1, w.shape[-1]),  # (taps..., in) rows, the order of the patches' last axis
        (((1,), (0,)), ((), ())),
        precision=params["precision"],
        preferred_element_type=params["preferred_element_type"],
    )
    return _from_canonical(out.reshape(*patches.shape[:-1], -1), dn.out_spec)


def _rewrite_matmul(eqn: Any) -> Callable | None:
    """:func:`convs_as_matmuls`' rewrite of one equation: a convolution it can compute."""
    if eqn.primitive is not lax.conv_general_dilated_p:
        return None
    lhs, rhs = (v.aval.shape for v in eqn.invars)
    if _as_matmul_shape(lhs, rhs, eqn.params) is None:
        return None
    return lambda lhs, rhs: _matmul_conv(lhs, rhs, eqn.params)


def _needs_rewrite(jaxpr: Any, rewrite: Callable = _rewrite_layout) -> bool:
    """Whether ``rewrite`` changes an equation of ``jaxpr`` or of a call :func:`_evaluate` inlines."""
    for eqn in jaxpr.eqns:
        if rewrite(eqn) is not None:
            return True
        if eqn.primitive.name in _INLINED and _needs_rewrite(_call_body(eqn).jaxpr, rewrite):
            return True
    return False


def _call_body(eqn: Any) -> Any:
    """The closed jaxpr a call equation (``pjit``, ``closed_call``, ...) evaluates."""
    body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    return body if isinstance(body, jex.ClosedJaxpr) else jex.ClosedJaxpr(body, ())


def _evaluate(jaxpr: Any, consts: list, args: list, rewrite: Callable = _rewrite_layout) -> list:
    """Evaluate ``jaxpr`` under the current trace with ``rewrite``'s equations replaced.

    ``rewrite(eqn)`` returns the function of the equation's inputs to compute instead, or None.
    Calls (``jit`` inside the function) whose bodies hold such an equation are evaluated in
    place; every other equation is bound as it is, including nested loops and custom-derivative
    calls (a convolution inside those is left as it is).
    """
    env: dict = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jex.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        replacement = rewrite(eqn)
        if replacement is not None:
            outs = [replacement(*ins)]
        elif prim.name in _INLINED and _needs_rewrite(_call_body(eqn).jaxpr, rewrite):
            body = _call_body(eqn)
            outs = _evaluate(body.jaxpr, body.consts, ins, rewrite)
        else:
            with eqn.ctx.manager:
                outs = prim.bind(*ins, **prim.get_bind_params(eqn.params))
            outs = outs if prim.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _traced_rewrite(fn: Callable, args: tuple, rewrite: Callable) -> Any:
    """``fn(*args)``, traced to a jaxpr and evaluated with ``rewrite`` (see :func:`_evaluate`)."""
    leaves = jax.tree.leaves(args)
    closed, out = jax.make_jaxpr(fn, return_shape=True)(*args)
    if not _needs_rewrite(closed.jaxpr, rewrite):
        flat = jex.jaxpr_as_fun(closed)(*leaves)
    else:
        flat = _evaluate(closed.jaxpr, list(closed.consts), leaves, rewrite)
    return jax.tree.unflatten(jax.tree.structure(out), flat)


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
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args))
        if not traced or jax.default_backend() != "cpu":
            return fn(*args)
        return _traced_rewrite(fn, args, _rewrite_layout)

    wrapped._conv_layout_in_loop = True
    return wrapped


def convs_as_matmuls(fn: Callable) -> Callable:
    """``fn`` with each convolution computed as one matrix product (im2col): for CNNs on CPU.

    Wrap a loss (or a model, or a training step) before handing it to an operator::

        op = hl.full_data_hvp(hl.convs_as_matmuls(loss_fn), params, data)

    Each ``lax.conv_general_dilated`` that ``fn`` calls, directly or through ``jit`` inside it
    (flax, equinox and ``jax.lax.conv`` all end there), becomes a matrix product of the strided
    slices of its padded input: one slice per kernel tap, so ``k`` times the input's memory for
    a kernel of ``k`` taps (9 for 3x3). Autodiff of the result then makes only matrix products,
    pads and slices, which XLA:CPU runs several times faster than the convolutions autodiff makes
    of a convolution (docs/estimators.md, "Convolutions as matrix products"). Left as they are:
    grouped and depthwise convolutions, transposed ones (a dilated input), and convolutions
    inside loops, ``jax.checkpoint`` or custom-derivative functions within ``fn``.

    A :class:`~hessian_lab.StatefulLoss` (or a curvature loss made of one) comes back as the same
    kind of object with its function rewritten, so BatchNorm models keep their state handling.

    The same function on any backend, summed in another order: equal to rounding. On a GPU the
    library convolutions are usually faster; there, leave ``fn`` as it is. Traces ``fn`` on each
    call (once under ``jit``); differentiable and vmappable like ``fn``; composes with
    :func:`in_loop`.
    """
    if isinstance(fn, StatefulLoss):  # a model with state: rewrite the function inside
        return fn._replace(fn=convs_as_matmuls(fn.fn))
    if isinstance(fn, CurvatureLoss):
        return dataclasses.replace(fn, loss=convs_as_matmuls(fn.loss))
    if not callable(fn):
        raise TypeError(f"convs_as_matmuls: fn must be callable, got {type(fn).__name__}")

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        # keyword arguments (a stateful loss's ``train`` and ``key``) are closed over, not traced
        bound = functools.partial(fn, **kwargs) if kwargs else fn
        return _traced_rewrite(bound, args, _rewrite_matmul)

    return wrapped


def conv_layouts(hlo_text: str) -> set[str]:
    """The layouts (``dim_labels``) of the convolutions in compiled HLO text.

    For tests and benchmarks: on CPU, a product whose loop bodies went through :func:`in_loop`
    shows only canonical ones (``b01f_01io->b01f`` for 2-D convolutions).
    """
    return set(re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo_text))
