"""The checks :func:`hessian_lab.problem.build` runs on what an entry point returns.

Errors are ``ValueError`` starting with the option's name (``name``, e.g. ``problem``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_shapes", "unpack"]


def unpack(returned: Any, given: Any, text: str, name: str) -> tuple[Any, Any, Any]:
    """``(model, loss, data)`` from a 3-tuple, a mapping or an object with those names."""
    if isinstance(returned, Mapping):
        returned = tuple(returned.get(k) for k in ("model", "loss", "data"))
    elif all(hasattr(returned, k) for k in ("model", "loss")) and not isinstance(returned, tuple):
        returned = (returned.model, returned.loss, getattr(returned, "data", None))
    if not isinstance(returned, tuple | list) or len(returned) not in (2, 3):
        raise ValueError(
            f"{name}: {text} must return (model, loss, data) or (model, loss), got "
            f"{type(returned).__name__}" + (f" of length {len(returned)}" if
                                            isinstance(returned, tuple | list) else "")
        )  # fmt: skip
    model, loss, data = (*returned, None) if len(returned) == 2 else returned
    data = given if data is None else data
    if data is None:
        raise ValueError(f"{name}: {text} returned no data and none was given (declare `data`)")
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(f"{name}: the data {text} returned must be a pair (x, y) of arrays")
    x, y = data
    if not (hasattr(x, "shape") and hasattr(y, "shape") and np.ndim(x) and np.ndim(y)):
        raise ValueError(
            f"{name}: the data {text} returned must be arrays (x, y) with an example axis"
        )
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: x and y must hold the same n >= 1 examples, got {x.shape} and {y.shape}"
        )
    return model, loss, (x, y)


def check_shapes(net: Any, loss_fn: Callable, batch: tuple, text: str, name: str) -> None:
    """``init`` gives float parameters and the loss a scalar, by ``jax.eval_shape`` (no compute)."""
    try:
        shapes = jax.eval_shape(net.init, jax.random.key(0))
    except ValueError as e:
        if str(e).startswith(f"{name}:"):
            raise
        raise ValueError(f"{name}: the model's init failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise ValueError(f"{name}: the model's init failed: {type(e).__name__}: {e}") from None
    leaves = jax.tree.leaves(shapes)
    bad = [leaf for leaf in leaves if not jnp.issubdtype(leaf.dtype, jnp.floating)]
    if not leaves or bad:
        raise ValueError(
            f"{name}: the parameters of {text} must be a non-empty pytree of float arrays, got "
            + ("none" if not leaves else f"a {bad[0].dtype} leaf")
        )
    try:
        out = jax.eval_shape(loss_fn, shapes, batch)
    except Exception as e:
        msg = " ".join(str(e).split())[:300]
        raise ValueError(
            f"{name}: the loss of {text} on the data failed: {type(e).__name__}: {msg}"
        ) from None
    if getattr(out, "shape", None) != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"{name}: the loss of {text} must be a float scalar, got "
            f"{getattr(out, 'dtype', type(out).__name__)} of shape {getattr(out, 'shape', '?')}"
        )
    if math.prod(leaves[0].shape) == 0 and len(leaves) == 1:
        raise ValueError(f"{name}: the model of {text} has no parameters")
