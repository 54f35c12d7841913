"""Small Myrtle-style convolutional networks (Shankar et al., arXiv 2003.02237), NHWC inputs."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from ._base import (
    ACTIVATIONS,
    PARAMS,
    Model,
    add_bias,
    check_choice,
    check_float,
    check_int,
    default_sigma_w,
    init_layers,
    weight_std_and_multiplier,
)

_KERNEL = 3
_MAX_STAGES = 3


def _avg_pool(h: jax.Array) -> jax.Array:
    """Return the 2x2, stride-2 average pool of an NHWC array (odd trailing rows/columns dropped)."""
    n, hh, ww, c = h.shape
    h = h[:, : hh - hh % 2, : ww - ww % 2, :]
    return h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))


def cnn(
    in_shape: tuple[int, int, int],
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
    """Build a Myrtle-style CNN: ``depth`` 3x3 conv + activation layers, pooling, dense readout.

    The conv layers are split into ``min(depth, 3)`` consecutive stages of near-equal size; after
    each stage a 2x2 average pool halves the spatial size (skipped once it is 1x1). A global average
    pool and a dense readout follow. Convolutions use "SAME" padding and stride 1, so the fan-in of a
    conv layer is ``9 * channels_in``. Weights and biases follow `mlp`'s parameterisations with that
    fan-in: ``"sp"`` ``W ~ N(0, s^2/m)``; ``"ntk"`` ``W ~ N(0, 1)`` times ``s/sqrt(m)``; ``"mup"``
    as ``"ntk"`` with the readout multiplied by ``s/width``, so ``Var f = O(1/width)``.

    Args:
      in_shape: ``(height, width, channels)`` of one input; inputs are NHWC ``(batch, *in_shape)``
        or a single ``in_shape`` image.
      out_dim: outputs; ``apply`` returns ``(batch, out_dim)`` (or ``(out_dim,)`` for one image).
      depth: number of conv layers, at least 1.
      width: channels of every conv layer.
      activation: one of "relu", "tanh", "gelu", "silu", "erf", "linear".
      bias: whether layers have biases.
      param: "sp", "ntk" or "mup".
      sigma_w: conv weight multiplier; default sqrt(2) for ReLU, 1 otherwise.
      sigma_b: standard deviation of the initial biases.
      readout_scale: readout weight multiplier.
      zero_readout: initialise the readout weights and bias to zero.

    Returns:
      A `Model`; params are ``{"conv": [{"w": (3, 3, c_in, width), "b": (width,)}, ...],
      "readout": {"w": (width, out_dim), "b": (out_dim,)}}``.

    Raises:
      ValueError: naming the argument, for a bad ``in_shape``, depth below 1, width below 1, an
        unknown activation or parameterisation, or a negative scale.
    """
    if not (
        isinstance(in_shape, tuple | list)
        and len(in_shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in in_shape)
    ):
        raise ValueError(
            f"in_shape: must be (height, width, channels) of ints >= 1, got {in_shape!r}"
        )
    in_shape = tuple(in_shape)
    out_dim = check_int("out_dim", out_dim, 1)
    depth = check_int("depth", depth, 1)
    width = check_int("width", width, 1)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("param", param, PARAMS)
    sigma_w = check_float("sigma_w", default_sigma_w(activation) if sigma_w is None else sigma_w)
    sigma_b = check_float("sigma_b", sigma_b)
    readout_scale = check_float("readout_scale", readout_scale)
    phi = ACTIVATIONS[activation]

    stages = np.array_split(np.arange(depth), min(depth, _MAX_STAGES))
    pool_after = {int(s[-1]) for s in stages}
    channels = [in_shape[2]] + [width] * depth
    conv_specs = []
    for c_in, c_out in itertools.pairwise(channels):
        std, mult = weight_std_and_multiplier(param, sigma_w, _KERNEL**2 * c_in, readout=False)
        conv_specs.append(((_KERNEL, _KERNEL, c_in, c_out), std, mult))
    r_std, r_mult = weight_std_and_multiplier(param, readout_scale, width, readout=True)

    @jax.jit
    def init(key: jax.Array) -> dict:
        layer_specs = [(shape, std) for shape, std, _ in conv_specs]
        layer_specs.append(((width, out_dim), r_std))
        layers = init_layers(key, layer_specs, bias=bias, sigma_b=sigma_b, zero_last=zero_readout)
        return {"conv": layers[:-1], "readout": layers[-1]}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        single = x.ndim == 3
        if single:
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != in_shape:
            raise ValueError(
                f"x: must have shape (batch, {', '.join(map(str, in_shape))}), got {x.shape}"
            )
        h = x
        for i, (layer, (_, _, mult)) in enumerate(zip(params["conv"], conv_specs, strict=True)):
            h = jax.lax.conv_general_dilated(
                h, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            if mult != 1.0:
                h = mult * h
            if bias:
                h = add_bias(h, layer["b"])
            h = phi(h)
            if i in pool_after and min(h.shape[1:3]) >= 2:
                h = _avg_pool(h)
        h = h.mean(axis=(1, 2))
        out = h @ params["readout"]["w"]
        if r_mult != 1.0:
            out = r_mult * out
        if bias:
            out = add_bias(out, params["readout"]["b"])
        return out[0] if single else out

    return Model(init, apply)
