"""Small Myrtle-style convolutional networks (Shankar et al., arXiv 2003.02237), NHWC inputs.

Optionally with a normalisation after every convolution, before its activation:

- ``"batchnorm"`` (Ioffe & Szegedy, arXiv 1502.03167): per channel over the batch and the pixels,
  ``(h - mu_B) / sqrt(var_B + eps) * scale + shift``. It has state, so the network is a
  :class:`~hessian_lab.StatefulModel`: in train mode ``mu_B``, ``var_B`` (biased) are the
  batch's and the running statistics move as ``r <- momentum * r + (1 - momentum) * batch``
  (flax's convention; PyTorch's ``momentum=0.1`` is ``0.9`` here); in eval mode the running
  ones are used and the state is returned unchanged.
- ``"layernorm"`` (Ba et al., arXiv 1607.06450): per example over all of its units (height,
  width and channels, i.e. GroupNorm with one group), with a per-channel ``scale``, ``shift``.
  No state: the network stays a :class:`Model`.

A normalised conv layer has no bias (the norm's ``shift`` takes its place; before BatchNorm a
bias would get a zero gradient). ``eps = 1e-5``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._stateful import StatefulModel
from ._base import (
    ACTIVATIONS,
    PARAMS,
    Model,
    add_bias,
    check_choice,
    check_float,
    check_int,
    default_sigma_w,
    float_dtype,
    init_layers,
    weight_std_and_multiplier,
)

_KERNEL = 3
_MAX_STAGES = 3
NORMS = ("none", "batchnorm", "layernorm")
EPS = 1e-5


def _avg_pool(h: jax.Array) -> jax.Array:
    """Return the 2x2, stride-2 average pool of an NHWC array (odd trailing rows/columns dropped)."""
    n, hh, ww, c = h.shape
    h = h[:, : hh - hh % 2, : ww - ww % 2, :]
    return h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))


def conv(h: jax.Array, w: jax.Array, mult: float = 1.0) -> jax.Array:
    """Return ``mult * conv(h, w)``: a stride-1, "SAME"-padded NHWC x HWIO convolution."""
    h = jax.lax.conv_general_dilated(
        h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return mult * h if mult != 1.0 else h


def _affine(h: jax.Array, mean: jax.Array, var: jax.Array, p: dict) -> jax.Array:
    c = (1, 1, 1, h.shape[-1])
    return (h - mean) * jax.lax.rsqrt(var + EPS) * p["scale"].reshape(c) + p["shift"].reshape(c)


def layer_norm(h: jax.Array, p: dict) -> jax.Array:
    """LayerNorm of an NHWC array over each example's (H, W, C), per-channel scale and shift."""
    mean = h.mean(axis=(1, 2, 3), keepdims=True)
    var = h.var(axis=(1, 2, 3), keepdims=True)
    return _affine(h, mean, var, p)


def batch_norm(
    h: jax.Array, p: dict, stats: dict, *, train: bool, momentum: float
) -> tuple[jax.Array, dict]:
    """BatchNorm of an NHWC array per channel: ``(normalised, new running statistics)``.

    Train mode: the batch's mean and biased variance over (N, H, W), and running statistics
    ``momentum * old + (1 - momentum) * batch`` (no gradient flows into them). Eval mode: the
    running ``stats`` ``{"mean", "var"}``, returned unchanged.
    """
    if not train:
        c = (1, 1, 1, h.shape[-1])
        return _affine(h, stats["mean"].reshape(c), stats["var"].reshape(c), p), stats
    mean = h.mean(axis=(0, 1, 2), keepdims=True)
    var = h.var(axis=(0, 1, 2), keepdims=True)
    batch = jax.lax.stop_gradient({"mean": mean.reshape(-1), "var": var.reshape(-1)})
    new = jax.tree.map(lambda r, b: momentum * r + (1 - momentum) * b, stats, batch)
    return _affine(h, mean, var, p), new


def norm_params(norm: str, widths: list[int]) -> list[dict]:
    """Initial ``{"scale": 1, "shift": 0}`` of each normalised layer (none without a norm)."""
    if norm == "none":
        return []
    dt = float_dtype()
    return [{"scale": jnp.ones((c,), dt), "shift": jnp.zeros((c,), dt)} for c in widths]


def norm_state(widths: list[int]) -> dict:
    """BatchNorm's initial running statistics: zero means and unit variances."""
    dt = float_dtype()
    return {"bn": [{"mean": jnp.zeros((c,), dt), "var": jnp.ones((c,), dt)} for c in widths]}


def with_norm(
    init: Callable,
    forward: Callable,
    norm: str,
    momentum: float,
    widths: list[int],
) -> Model | StatefulModel:
    """Wrap ``forward(params, x, normalize) -> out`` as a Model, or a StatefulModel for BatchNorm.

    ``normalize(i, h)`` normalises the output of normalised layer ``i`` (``params["norm"][i]``).
    """
    if norm != "batchnorm":

        def normalize(i, h, params):
            return h if norm == "none" else layer_norm(h, params["norm"][i])

        return Model(init, lambda params, x: forward(params, x, normalize))

    def apply(params: dict, state: dict, x: jax.Array, *, train: bool, key: Any = None):
        del key  # no dropout
        new = {}

        def normalize(i, h, params):
            h, new[i] = batch_norm(
                h, params["norm"][i], state["bn"][i], train=train, momentum=momentum
            )
            return h

        out = forward(params, x, normalize)
        return out, {"bn": [new[i] for i in range(len(widths))]} if train else state

    return StatefulModel(init, apply, norm_state(widths))


def check_norm(norm: Any, momentum: Any) -> float:
    """Check ``norm`` and the BatchNorm ``momentum`` (in [0, 1)); return the momentum."""
    check_choice("norm", norm, NORMS)
    m = check_float("momentum", momentum)
    if m >= 1:
        raise ValueError(f"momentum: must be in [0, 1), got {momentum!r}")
    return m


def images(x: Any, in_shape: tuple) -> tuple[jax.Array, bool]:
    """Return ``x`` as an NHWC batch and whether it was one image; raise on another shape."""
    x = jnp.asarray(x)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4 or x.shape[1:] != in_shape:
        raise ValueError(
            f"x: must have shape (batch, {', '.join(map(str, in_shape))}), got {x.shape}"
        )
    return x, single


def check_in_shape(in_shape: Any) -> tuple[int, int, int]:
    """Return ``in_shape`` as a tuple, or raise unless it is three ints >= 1."""
    if not (
        isinstance(in_shape, tuple | list)
        and len(in_shape) == 3
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in in_shape)
    ):
        raise ValueError(
            f"in_shape: must be (height, width, channels) of ints >= 1, got {in_shape!r}"
        )
    return tuple(in_shape)


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
    norm: str = "none",
    momentum: float = 0.9,
) -> Model | StatefulModel:
    """Build a Myrtle-style CNN: ``depth`` 3x3 conv (+ norm) + activation layers, pooling, readout.

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
      bias: whether layers have biases (a normalised conv layer never has one: module doc).
      param: "sp", "ntk" or "mup".
      sigma_w: conv weight multiplier; default sqrt(2) for ReLU, 1 otherwise.
      sigma_b: standard deviation of the initial biases.
      readout_scale: readout weight multiplier.
      zero_readout: initialise the readout weights and bias to zero.
      norm: "none", "batchnorm" or "layernorm" after each conv, before the activation (module
        doc). "batchnorm" returns a :class:`~hessian_lab.StatefulModel`.
      momentum: BatchNorm's running-statistics momentum, in [0, 1).

    Returns:
      A `Model`; params are ``{"conv": [{"w": (3, 3, c_in, width), "b": (width,)}, ...],
      "readout": {"w": (width, out_dim), "b": (out_dim,)}}``, plus ``"norm": [{"scale":
      (width,), "shift": (width,)}, ...]`` with a norm. For "batchnorm" a ``StatefulModel``
      whose ``apply(params, state, x, *, train, key) -> (outputs, new_state)`` and state
      ``{"bn": [{"mean": (width,), "var": (width,)}, ...]}``.

    Raises:
      ValueError: naming the argument, for a bad ``in_shape``, depth below 1, width below 1, an
        unknown activation, parameterisation or norm, a negative scale, or a bad momentum.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> net = cnn((8, 8, 1), 10, depth=2, width=4, norm="batchnorm")
      >>> params = net.init(jax.random.key(0))
      >>> out, state = net.apply(params, net.state, jnp.ones((5, 8, 8, 1)), train=True)
      >>> out.shape, state["bn"][0]["mean"].shape
      ((5, 10), (4,))
    """
    in_shape = check_in_shape(in_shape)
    out_dim = check_int("out_dim", out_dim, 1)
    depth = check_int("depth", depth, 1)
    width = check_int("width", width, 1)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("param", param, PARAMS)
    sigma_w = check_float("sigma_w", default_sigma_w(activation) if sigma_w is None else sigma_w)
    sigma_b = check_float("sigma_b", sigma_b)
    readout_scale = check_float("readout_scale", readout_scale)
    momentum = check_norm(norm, momentum)
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
        if norm == "none":
            return {"conv": layers[:-1], "readout": layers[-1]}
        conv_layers = [{"w": layer["w"]} for layer in layers[:-1]]
        return {"conv": conv_layers, "norm": norm_params(norm, [width] * depth),
                "readout": layers[-1]}  # fmt: skip

    def forward(params: dict, x: jax.Array, normalize: Callable) -> jax.Array:
        h, single = images(x, in_shape)
        for i, (layer, (_, _, mult)) in enumerate(zip(params["conv"], conv_specs, strict=True)):
            h = conv(h, layer["w"], mult)
            if bias and norm == "none":
                h = add_bias(h, layer["b"])
            h = phi(normalize(i, h, params))
            if i in pool_after and min(h.shape[1:3]) >= 2:
                h = _avg_pool(h)
        h = h.mean(axis=(1, 2))
        out = h @ params["readout"]["w"]
        if r_mult != 1.0:
            out = r_mult * out
        if bias:
            out = add_bias(out, params["readout"]["b"])
        return out[0] if single else out

    return with_norm(init, forward, norm, momentum, [width] * depth)
