"""Shared pieces of the models: the `Model` tuple, activations, parameterised dense layers, checks.

A parameterisation says how a weight's initial variance and its forward multiplier depend on the
fan-in. For a layer with fan-in ``m`` and weight multiplier ``sigma``:

- ``"sp"`` (standard): ``W ~ N(0, sigma^2 / m)``, forward ``x @ W``.
- ``"ntk"``: ``W ~ N(0, 1)``, forward ``sigma * x @ W / sqrt(m)``.
- ``"mup"`` (NTK form of Yang & Hu, arXiv 2011.14522, as in Kalra & Barkeshli, arXiv 2302.12250):
  hidden layers as ``"ntk"``; the readout has an extra ``1/sqrt(m)``, i.e. forward
  ``sigma * x @ W / m``, so the output variance at initialisation scales as ``1/width``.

Biases are ``b ~ N(0, sigma_b^2)`` added with multiplier 1 in every parameterisation, so a bias with
``sigma_b = 0`` starts at zero but still trains (``sigma_b * b`` with ``b ~ N(0, 1)`` would freeze it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

PARAMS = ("sp", "ntk", "mup")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "erf": jax.scipy.special.erf,
    "linear": lambda x: x,
}


class Model(NamedTuple):
    """A network as two pure functions.

    Attributes:
      init: ``init(key) -> params``, a dict pytree of arrays.
      apply: ``apply(params, x) -> outputs``.
    """

    init: Callable[[jax.Array], PyTree]
    apply: Callable[[PyTree, jax.Array], jax.Array]


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` unless it is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, *, positive: bool = False) -> float:
    """Return ``value`` as a float, or raise ValueError unless it is finite and >= 0 (> 0 if positive)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name}: must be finite and {bound}, got {value!r}")
    return v


def check_choice(name: str, value: Any, allowed: tuple[str, ...] | dict) -> str:
    """Return ``value``, or raise ValueError naming ``name`` and the allowed values."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: must be one of {sorted(allowed)}, got {value!r}")
    return value


def default_sigma_w(activation: str) -> float:
    """Return the default weight multiplier: sqrt(2) for ReLU (He et al.), 1 otherwise."""
    return math.sqrt(2.0) if activation == "relu" else 1.0


def weight_std_and_multiplier(
    param: str, sigma: float, fan_in: int, *, readout: bool
) -> tuple[float, float]:
    """Return ``(init_std, forward_multiplier)`` of a weight under a parameterisation (module doc)."""
    if param == "sp":
        return sigma / math.sqrt(fan_in), 1.0
    mult = sigma / math.sqrt(fan_in)
    if param == "mup" and readout:
        mult /= math.sqrt(fan_in)
    return 1.0, mult


def float_dtype() -> jnp.dtype:
    """Return the default float dtype: float64 under ``jax_enable_x64``, float32 otherwise."""
    return jnp.zeros(()).dtype


def normals(key: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """Return independent standard normal arrays of the given shapes, cut from one draw.

    One draw (one RNG kernel) instead of one per shape keeps the compile time of ``init`` low.
    """
    sizes = [math.prod(s) for s in shapes]
    z = jax.random.normal(key, (sum(sizes),), float_dtype())
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(z[start : start + size].reshape(shape))
        start += size
    return out


def init_layers(
    key: jax.Array,
    specs: list[tuple[tuple[int, ...], float]],
    *,
    bias: bool,
    sigma_b: float,
    zero_last: bool = False,
) -> list[dict[str, jax.Array]]:
    """Return layers ``{"w": N(0, std^2) of w_shape, "b": N(0, sigma_b^2)}`` for ``(w_shape, std)``.

    Biases have ``w_shape[-1]`` entries (none if not ``bias``; zeros if ``sigma_b == 0``); with
    ``zero_last`` the last layer's weights and bias are zeros.
    """
    draw_b = bias and sigma_b > 0
    shapes = [shape for shape, _ in specs]
    z = normals(key, shapes + ([(shape[-1],) for shape in shapes] if draw_b else []))
    layers = []
    for i, (shape, std) in enumerate(specs):
        zero = zero_last and i == len(specs) - 1
        layer = {"w": jnp.zeros(shape, float_dtype()) if zero else std * z[i]}
        if bias:
            if zero or not draw_b:
                layer["b"] = jnp.zeros((shape[-1],), float_dtype())
            else:
                layer["b"] = sigma_b * z[len(specs) + i]
        layers.append(layer)
    return layers


def add_bias(h: jax.Array, b: jax.Array) -> jax.Array:
    """Return ``h + b`` with ``b`` broadcast over the leading axes of ``h`` (no rank promotion)."""
    return h + jnp.expand_dims(b, tuple(range(h.ndim - 1)))


def check_last_dim(name: str, x: jax.Array, size: int) -> None:
    """Raise ValueError unless ``x`` has at least one axis and its last axis has ``size`` entries."""
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name}: must have shape (..., {size}), got {x.shape}")
