"""A small ResNet-style CNN with BatchNorm (He et al., arXiv 1512.03385), NHWC inputs."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import numpy as np

from .._stateful import StatefulModel
from ._base import (
    ACTIVATIONS,
    Model,
    add_bias,
    check_choice,
    check_float,
    check_int,
    default_sigma_w,
    init_layers,
)
from ._cnn import (
    _KERNEL,
    _MAX_STAGES,
    _avg_pool,
    check_in_shape,
    check_norm,
    conv,
    images,
    norm_params,
    with_norm,
)


def resnet(
    in_shape: tuple[int, int, int],
    out_dim: int,
    *,
    depth: int,
    width: int,
    activation: str = "relu",
    norm: str = "batchnorm",
    momentum: float = 0.9,
    sigma_w: float | None = None,
    readout_scale: float = 1.0,
    zero_readout: bool = False,
) -> Model | StatefulModel:
    """Build a ResNet-style CNN: a stem conv, ``depth`` residual blocks, pooling, readout.

    Stem: ``h = phi(N(conv(x)))`` with ``width`` channels. Block: ``h <- phi(h + N(conv(phi(
    N(conv(h))))))``, two 3x3 convs, each followed by the norm ``N`` (BatchNorm by default; see
    :mod:`hessian_lab.models._cnn` for the norms and their state), and an identity shortcut
    (every layer has ``width`` channels). The blocks are split into ``min(depth, 3)`` stages,
    each followed by a 2x2 average pool (skipped once 1x1); then a global average pool and a
    dense readout with a bias. Standard parameterisation: conv weights ``N(0, sigma_w^2 / (9
    c_in))`` (He et al. for ReLU), the readout ``N(0, readout_scale^2 / width)``, biases zero.
    Normalised convs have no bias; with ``norm="none"`` every conv has one.

    Args:
      in_shape: ``(height, width, channels)`` of one input (NHWC batches, or one image).
      out_dim: outputs.
      depth: residual blocks, at least 1 (``2 * depth + 1`` conv layers).
      width: channels of every conv layer.
      activation: one of "relu", "tanh", "gelu", "silu", "erf", "linear".
      norm: "batchnorm" (default: a :class:`~hessian_lab.StatefulModel`), "layernorm" or "none".
      momentum: BatchNorm's running-statistics momentum, in [0, 1).
      sigma_w: conv weight multiplier; default sqrt(2) for ReLU, 1 otherwise.
      readout_scale: readout weight multiplier.
      zero_readout: initialise the readout to zero.

    Returns:
      ``StatefulModel`` (BatchNorm) or ``Model``; params ``{"conv": [stem, block 1 conv 1,
      block 1 conv 2, ...] of {"w": (3, 3, c_in, width)}, "norm": [{"scale", "shift"}, ...]
      aligned with "conv", "readout": {"w": (width, out_dim), "b": (out_dim,)}}``.

    Raises:
      ValueError: naming the argument, for a bad ``in_shape``, ``depth``, ``width``,
        activation, norm, momentum or scale.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> net = resnet((8, 8, 1), 10, depth=2, width=4)
      >>> params = net.init(jax.random.key(0))
      >>> out, state = net.apply(params, net.state, jnp.ones((3, 8, 8, 1)), train=False)
      >>> out.shape, len(params["conv"]), len(state["bn"])
      ((3, 10), 5, 5)
    """
    in_shape = check_in_shape(in_shape)
    out_dim = check_int("out_dim", out_dim, 1)
    depth = check_int("depth", depth, 1)
    width = check_int("width", width, 1)
    check_choice("activation", activation, ACTIVATIONS)
    sigma_w = check_float("sigma_w", default_sigma_w(activation) if sigma_w is None else sigma_w)
    readout_scale = check_float("readout_scale", readout_scale)
    momentum = check_norm(norm, momentum)
    phi = ACTIVATIONS[activation]
    stages = np.array_split(np.arange(depth), min(depth, _MAX_STAGES))
    pool_after = {int(s[-1]) for s in stages}
    c_ins = [in_shape[2]] + [width] * (2 * depth)
    specs = [((_KERNEL, _KERNEL, c, width), sigma_w / math.sqrt(_KERNEL**2 * c)) for c in c_ins]
    specs.append(((width, out_dim), readout_scale / math.sqrt(width)))

    @jax.jit
    def init(key: jax.Array) -> dict:
        layers = init_layers(key, specs, bias=True, sigma_b=0.0, zero_last=zero_readout)
        if norm == "none":
            return {"conv": layers[:-1], "readout": layers[-1]}
        conv_layers = [{"w": layer["w"]} for layer in layers[:-1]]
        return {"conv": conv_layers, "norm": norm_params(norm, [width] * len(c_ins)),
                "readout": layers[-1]}  # fmt: skip

    def forward(params: dict, x: jax.Array, normalize: Callable) -> jax.Array:
        def layer(i, h):
            h = conv(h, params["conv"][i]["w"])
            if norm == "none":
                h = add_bias(h, params["conv"][i]["b"])
            return normalize(i, h, params)

        h, single = images(x, in_shape)
        h = phi(layer(0, h))
        for j in range(depth):
            h = phi(h + layer(2 + 2 * j, phi(layer(1 + 2 * j, h))))
            if j in pool_after and min(h.shape[1:3]) >= 2:
                h = _avg_pool(h)
        out = add_bias(h.mean(axis=(1, 2)) @ params["readout"]["w"], params["readout"]["b"])
        return out[0] if single else out

    return with_norm(init, forward, norm, momentum, [width] * len(c_ins))
