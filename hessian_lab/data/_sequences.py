"""Seeded token sequences for sequence models: linear congruential generators (LCGs)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._dataset import Dataset
from ._synthetic import _as_key, _check_int, _rng

__all__ = ["full_period_lcgs", "lcg_sequences"]


def _prime_factors(m: int) -> list[int]:
    out, p = [], 2
    while p * p <= m:
        if m % p == 0:
            out.append(p)
            while m % p == 0:
                m //= p
        p += 1
    return out + ([m] if m > 1 else [])


def full_period_lcgs(modulus: int) -> np.ndarray:
    """Return every ``(a, c)`` with ``0 <= a, c < modulus`` whose LCG has the full period ``modulus``.

    Hull-Dobell theorem: ``x -> (a x + c) mod m`` visits all ``m`` residues from any start iff
    ``gcd(c, m) = 1``, ``a - 1`` is divisible by every prime factor of ``m``, and ``a - 1`` is
    divisible by 4 when ``m`` is. Cost: ``O(m)``.

    Returns:
      An int64 array ``(P, 2)`` of the pairs, sorted.

    Raises:
      ValueError: ``modulus`` below 2.

    Example:
      >>> full_period_lcgs(4).tolist()
      [[1, 1], [1, 3]]
    """
    m = _check_int("modulus", modulus, 2)
    step = math.prod(_prime_factors(m))
    if m % 4 == 0 and step % 4:
        step *= 2  # step holds 2 once; 4 | step makes a = 1 (mod 4)
    multipliers = [a for a in range(m) if (a - 1) % step == 0]
    increments = [c for c in range(1, m) if math.gcd(c, m) == 1]
    return np.array([(a, c) for a in multipliers for c in increments], np.int64)


def lcg_sequences(
    key: Any,
    n: int,
    *,
    modulus: int = 16,
    length: int = 32,
    multiplier: int | None = None,
    increment: int | None = None,
) -> Dataset:
    """Sample sequences ``x_{t+1} = (a x_t + c) mod m`` from uniform starts, as next-token data.

    With ``multiplier`` and ``increment`` both None, every sequence draws its own ``(a, c)``
    uniformly from the full-period pairs (:func:`full_period_lcgs`), so predicting the next token
    needs the rule inferred in context (the pseudo-random-number task of Tao et al., arXiv
    2502.10390); given, the one rule ``(a, c)`` serves every sequence (a bigram task). The vocab
    is the ``m`` residues.

    Args:
      key: a JAX PRNG key or an int seed; the same key gives the same sequences.
      n: number of sequences.
      modulus: ``m``, the vocabulary size, at least 2.
      length: tokens per input sequence (the transformer's context).
      multiplier, increment: a fixed ``a`` and ``c`` in ``[0, m)``, or None (both) to draw
        full-period pairs per sequence.

    Returns:
      A `Dataset` of int32 tokens: ``x = seq[:, :-1]`` and ``y = seq[:, 1:]``, both
      ``(n, length)``.

    Raises:
      ValueError: naming the argument, for bad sizes, ``a`` or ``c`` outside ``[0, m)``, or only
        one of them given.

    Example:
      >>> ds = lcg_sequences(0, 2, modulus=8, length=4, multiplier=5, increment=3)
      >>> bool(((5 * ds.x + 3) % 8 == ds.y).all())
      True
    """
    n = _check_int("n", n, 1)
    m = _check_int("modulus", modulus, 2)
    length = _check_int("length", length, 1)
    if (multiplier is None) != (increment is None):
        raise ValueError("multiplier: give both multiplier and increment, or neither")
    rng = _rng(_as_key(key))
    if multiplier is None:
        pairs = full_period_lcgs(m)
        a, c = pairs[rng.integers(len(pairs), size=n)].T
    else:
        for name, v in (("multiplier", multiplier), ("increment", increment)):
            if _check_int(name, v, 0) >= m:
                raise ValueError(f"{name}: must be an integer in [0, {m}), got {v!r}")
        a, c = np.full(n, multiplier, np.int64), np.full(n, increment, np.int64)
    seq = np.empty((n, length + 1), np.int64)
    seq[:, 0] = rng.integers(m, size=n)
    for t in range(length):
        seq[:, t + 1] = (a * seq[:, t] + c) % m
    seq = seq.astype(np.int32)
    return Dataset(seq[:, :-1], seq[:, 1:])
