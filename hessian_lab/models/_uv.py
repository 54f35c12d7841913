"""The two-layer linear "UV" model of Lewkowycz et al. (arXiv 2003.02218) and Kalra, He & Barkeshli."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._base import Model, check_choice, check_float, check_int, check_last_dim, normals

_UV_PARAMS = ("ntp", "mup")


def uv(
    in_dim: int,
    width: int,
    out_dim: int = 1,
    *,
    param: str = "ntp",
    init_scale: float = 1.0,
) -> Model:
    """Build the two-layer linear network ``f(x) = v . (u x) / sqrt(n)`` of width ``n``.

    ``u`` has shape ``(n, in_dim)``, ``v`` shape ``(n,)`` (``(n, out_dim)`` if ``out_dim > 1``), both
    ``N(0, init_scale^2)`` entrywise.

    - ``"ntp"``: ``f = v . (u x) / sqrt(n)``. With one input of norm 1 and ``in_dim = 1``, the NTK is
      ``Theta = (|u|^2 + |v|^2) |x|^2 / n = O(1)`` and ``Var f = init_scale^4 |x|^2``.
    - ``"mup"``: ``f = v . (u x) / n`` (NTK form of muP with the readout's extra ``1/sqrt(n)``), so
      ``Var f = init_scale^4 |x|^2 / n`` and ``Theta = O(1/n)``; muP's learning rate ``eta * n``
      belongs to the optimiser.

    Args:
      in_dim: input features ``d``; inputs have shape ``(..., d)``.
      width: hidden units ``n``.
      out_dim: outputs; ``apply`` returns shape ``(..., out_dim)`` (so ``(batch, 1)`` by default).
      param: "ntp" or "mup".
      init_scale: standard deviation of the entries of ``u`` and ``v``.

    Returns:
      A `Model`; params are ``{"u": (n, d), "v": (n,) or (n, out_dim)}``.

    Raises:
      ValueError: naming the argument, for a dimension below 1, an unknown ``param`` or a negative
        ``init_scale``.

    Example:
      >>> net = uv(1, 100)
      >>> net.apply(net.init(jax.random.key(0)), jnp.ones((5, 1))).shape
      (5, 1)
    """
    in_dim = check_int("in_dim", in_dim, 1)
    width = check_int("width", width, 1)
    out_dim = check_int("out_dim", out_dim, 1)
    check_choice("param", param, _UV_PARAMS)
    init_scale = check_float("init_scale", init_scale)
    mult = 1.0 / (math.sqrt(width) if param == "ntp" else width)
    v_shape = (width,) if out_dim == 1 else (width, out_dim)

    @jax.jit
    def init(key: jax.Array) -> dict:
        u, v = normals(key, [(width, in_dim), v_shape])
        return {"u": init_scale * u, "v": init_scale * v}

    def apply(params: dict, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        check_last_dim("x", x, in_dim)
        h = x @ params["u"].T
        v = params["v"].reshape(width, out_dim)
        return mult * (h @ v)

    return Model(init, apply)
