"""Seeded synthetic datasets: a random teacher network, a Gaussian mixture."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..models import mlp
from ._dataset import Dataset, float_dtype, to_one_hot


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_scale(name: str, value: Any) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _as_key(key: Any) -> jax.Array:
    """Return a JAX PRNG key from a key or an int seed."""
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        return key
    raise ValueError(f"key: must be a jax PRNG key or an int seed, got {type(key).__name__}")


def _rng(key: jax.Array) -> np.random.Generator:
    """Return a numpy Generator seeded deterministically from a JAX key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def teacher(
    key: Any,
    n: int,
    in_dim: int,
    out_dim: int = 1,
    *,
    depth: int = 1,
    width: int = 64,
    activation: str = "relu",
    noise: float = 0.0,
    dtype: Any = np.float32,
) -> Dataset:
    """Sample a regression task ``y = g(x) + noise * eps`` from a random teacher network ``g``.

    ``x ~ N(0, I_in_dim)``; ``g`` is ``models.mlp(in_dim, out_dim, depth=depth, width=width,
    activation=activation)`` in SP at a random initialisation (so ``Var g(x) = O(1)``);
    ``eps ~ N(0, I)``.

    Args:
      key: a JAX PRNG key or an int seed; the same key gives the same data.
      n: number of examples.
      in_dim: input features.
      out_dim: outputs of the teacher.
      depth, width, activation: the teacher's architecture (`models.mlp`).
      noise: standard deviation of the label noise.
      dtype: float dtype of ``x`` and ``y``.

    Returns:
      A `Dataset` with ``x`` ``(n, in_dim)`` and ``y`` ``(n, out_dim)``.

    Raises:
      ValueError: naming the argument, for sizes below 1, a negative noise or a bad key.
    """
    n = _check_int("n", n, 1)
    noise = _check_scale("noise", noise)
    dtype = float_dtype(dtype)
    net = mlp(in_dim, out_dim, depth=depth, width=width, activation=activation)  # validates
    init, apply = net.init, net.apply
    k_net, k_data = jax.random.split(_as_key(key))
    rng = _rng(k_data)
    x = rng.standard_normal((n, in_dim)).astype(dtype)
    y = np.asarray(apply(init(k_net), x), dtype=np.float64)
    y = y + noise * rng.standard_normal(y.shape)
    return Dataset(x, y.astype(dtype))


def gaussian_mixture(
    key: Any,
    n: int,
    in_dim: int,
    num_classes: int = 2,
    *,
    separation: float = 4.0,
    std: float = 1.0,
    one_hot: bool = True,
    dtype: Any = np.float32,
) -> Dataset:
    """Sample a balanced classification task from a mixture of isotropic Gaussians.

    Class means are ``m_c ~ N(0, separation^2 / (2 in_dim) I)``, so two means lie about
    ``separation`` apart; example ``i`` has label ``c_i`` (classes balanced, order shuffled) and
    ``x_i = m_{c_i} + std * eps_i``.

    Args:
      key: a JAX PRNG key or an int seed.
      n: number of examples.
      in_dim: input features.
      num_classes: number of components, at least 2.
      separation: typical distance between two class means.
      std: within-class standard deviation.
      one_hot: return one-hot targets ``(n, num_classes)``; otherwise int labels ``(n,)``.
      dtype: float dtype of ``x`` (and one-hot ``y``).

    Returns:
      A `Dataset`.

    Raises:
      ValueError: naming the argument, for bad sizes or negative scales.
    """
    n = _check_int("n", n, 1)
    in_dim = _check_int("in_dim", in_dim, 1)
    num_classes = _check_int("num_classes", num_classes, 2)
    separation, std = _check_scale("separation", separation), _check_scale("std", std)
    dtype = float_dtype(dtype)
    rng = _rng(_as_key(key))
    means = rng.standard_normal((num_classes, in_dim)) * separation / math.sqrt(2 * in_dim)
    labels = rng.permutation(np.arange(n) % num_classes)
    x = means[labels] + std * rng.standard_normal((n, in_dim))
    y = to_one_hot(labels, num_classes, dtype) if one_hot else labels.astype(np.int64)
    return Dataset(x.astype(dtype), y)
