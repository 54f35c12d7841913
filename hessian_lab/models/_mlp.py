"""Fully connected networks in the SP, NTK and muP parameterisations."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from ._base import (
    ACTIVATIONS,
    PARAMS,
    Model,
    add_bias,
    check_choice,
    check_float,
    check_int,
    check_last_dim,
    default_sigma_w,
    init_layers,
    weight_std_and_multiplier,
)


def mlp(
    in_dim: int,
    out_dim: int,
    *,
    depth: int,
    width: int,
    activation: str = "relu",
    bias: bool = True,
    param: str = "sp",
    sigma_w: float | None = None,
    sigma_b: float = 0.0,
    readout_scale: float = 1.0,
    zero_readout: bool = False,
) -> Model:
    """Build a fully connected network with ``depth`` hidden layers of ``width`` units.

    ``h_1 = a_1 x W_1 + b_1``, ``h_{l+1} = a_{l+1} phi(h_l) W_{l+1} + b_{l+1}``, and the output is
    ``f = a_r phi(h_depth) W_r + b_r``. For a layer with fan-in ``m`` (``in_dim`` for the first layer,
    ``width`` after it) and multiplier ``s`` (``sigma_w`` for hidden layers, ``readout_scale`` for
    the readout):

    - ``"sp"``: ``W ~ N(0, s^2/m)``, ``a = 1``;
    - ``"ntk"``: ``W ~ N(0, 1)``, ``a = s/sqrt(m)``;
    - ``"mup"``: hidden layers as ``"ntk"``; readout ``W ~ N(0, 1)``, ``a = s/m`` (NTK form with an
      extra ``1/sqrt(width)``), so ``Var f = O(1/width)`` at initialisation. The muP learning-rate
      scalings belong to the optimiser, not to the model.

    Biases are ``b ~ N(0, sigma_b^2)`` with multiplier 1. With ``|x|^2 / in_dim = 1``, ReLU and
    ``sigma_w^2 = 2``, every pre-activation has variance 2 at any width in SP and NTK, and the
    output has variance ``readout_scale^2`` (SP, NTK) or ``readout_scale^2 / width`` (muP).

    Args:
      in_dim: input features; inputs have shape ``(..., in_dim)``.
      out_dim: outputs; ``apply`` returns shape ``(..., out_dim)``.
      depth: number of hidden layers (0 gives a linear model).
      width: units per hidden layer.
      activation: one of "relu", "tanh", "gelu", "silu", "erf", "linear".
      bias: whether layers have biases.
      param: "sp", "ntk" or "mup".
      sigma_w: hidden-layer weight multiplier; default sqrt(2) for ReLU, 1 otherwise.
      sigma_b: standard deviation of the initial biases.
      readout_scale: readout weight multiplier.
      zero_readout: initialise the readout weights and bias to zero.

    Returns:
      A `Model`; params are ``{"layers": [{"w": (m, n), "b": (n,)}, ...]}``, readout last.

    Raises:
      ValueError: naming the argument, for an unknown activation or parameterisation, a negative
        depth, a width or dimension below 1, or a negative or non-finite scale.

    Example:
      >>> net = mlp(4, 2, depth=2, width=8)
      >>> net.apply(net.init(jax.random.key(0)), jnp.ones((3, 4))).shape
      (3, 2)
    """
    in_dim = check_int("in_dim", in_dim, 1)
    out_dim = check_int("out_dim", out_dim, 1)
    depth = check_int("depth", depth, 0)
    width = check_int("width", width, 1)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("param", param, PARAMS)
    sigma_w = check_float("sigma_w", default_sigma_w(activation) if sigma_w is None else sigma_w)
    sigma_b = check_float("sigma_b", sigma_b)
    readout_scale = check_float("readout_scale", readout_scale)
    phi = ACTIVATIONS[activation]

    dims = [in_dim] + [width] * depth + [out_dim]
    specs = []  # (shape, init std, multiplier, is readout)
    for i, (m, n) in enumerate(itertools.pairwise(dims)):
        readout = i == depth
        s = readout_scale if readout else sigma_w
        std, mult = weight_std_and_multiplier(param, s, m, readout=readout)
        specs.append(((m, n), std, mult, readout))

    @jax.jit
    def init(key: jax.Array) -> dict:
        layer_specs = [(shape, std) for shape, std, _, _ in specs]
        return {
            "layers": init_layers(
                key, layer_specs, bias=bias, sigma_b=sigma_b, zero_last=zero_readout
            )
        }

    def apply(params: dict, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        check_last_dim("x", x, in_dim)
        h = x
        for i, (layer, (_, _, mult, _)) in enumerate(zip(params["layers"], specs, strict=True)):
            if i > 0:
                h = phi(h)
            h = h @ layer["w"]
            if mult != 1.0:
                h = mult * h
            if bias:
                h = add_bias(h, layer["b"])
        return h

    return Model(init, apply)
