"""Seeded token sequences for sequence models: linear congruential generators, walks on graphs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._dataset import Dataset
from ._synthetic import _as_key, _check_int, _rng

__all__ = ["full_period_lcgs", "graph_walks", "lcg_sequences", "random_graph"]

GRAPHS = ("directed", "undirected")
_TRIES = 1000  # Erdos-Renyi redraws before a mean degree is called too small to connect


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


def _connected(adj: np.ndarray) -> bool:
    seen, frontier = np.zeros(len(adj), bool), np.zeros(len(adj), bool)
    frontier[0] = True
    while frontier.any():
        seen |= frontier
        frontier = adj[frontier].any(axis=0) & ~seen
    return bool(seen.all())


def _draw_graph(
    rng: np.random.Generator, num_nodes: int, degree: int, graph: str
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`random_graph` from ``rng`` as a neighbour table ``(num_nodes, max degree)`` (each
    row's neighbours first, in the order drawn) and the degrees; the walks continue ``rng``."""
    if graph == "directed":
        table = np.stack([rng.choice(num_nodes, degree, replace=False) for _ in range(num_nodes)])
        return table, np.full(num_nodes, degree)
    p = degree / (num_nodes - 1)
    upper = np.triu(np.ones((num_nodes, num_nodes), bool), 1)
    for _ in range(_TRIES):
        adj = (rng.random((num_nodes, num_nodes)) < p) & upper
        adj |= adj.T
        if _connected(adj):
            return np.argsort(~adj, axis=1, kind="stable"), adj.sum(axis=1)
    raise ValueError(
        f"degree: a mean degree of {degree} on {num_nodes} nodes gave no connected graph in "
        f"{_TRIES} draws; raise it"
    )


def _check_graph(num_nodes: Any, degree: Any, graph: Any) -> tuple[int, int, str]:
    num_nodes = _check_int("num_nodes", num_nodes, 2 if graph == "undirected" else 1)
    degree = _check_int("degree", degree, 1)
    if graph not in GRAPHS:
        raise ValueError(f"graph: must be one of {GRAPHS}, got {graph!r}")
    most = num_nodes - (graph == "undirected")
    if degree > most:
        raise ValueError(f"degree: {degree} must not exceed {most} for a {graph} graph")
    return num_nodes, degree, graph


def random_graph(
    key: Any, num_nodes: int = 16, *, degree: int = 3, graph: str = "directed"
) -> np.ndarray:
    """Draw the random graph :func:`graph_walks` walks on (the same key gives the same graph).

    * ``"directed"``: every node gets ``degree`` distinct out-neighbours drawn uniformly
      (self-loops allowed);
    * ``"undirected"``: Erdos-Renyi ``G(num_nodes, p)`` with ``p = degree / (num_nodes - 1)``
      (mean degree ``degree``, no self-loops), redrawn until connected, so a walk's visits
      converge to ``deg(v) / 2|E|`` (the stationary distribution) from any start.

    Cost: ``O(num_nodes^2)`` per draw.

    Returns:
      A bool ``(num_nodes, num_nodes)`` adjacency: ``adj[u, v]`` when a walk may step ``u -> v``
      (symmetric for ``"undirected"``).

    Raises:
      ValueError: naming the argument, for bad sizes, ``degree`` above ``num_nodes`` (directed)
        or ``num_nodes - 1`` (undirected), or a mean degree too small to draw a connected graph.

    Example:
      >>> adj = random_graph(0, 6, degree=2, graph="undirected")
      >>> bool((adj == adj.T).all() and not adj.diagonal().any())
      True
    """
    num_nodes, degree, graph = _check_graph(num_nodes, degree, graph)
    table, deg = _draw_graph(_rng(_as_key(key)), num_nodes, degree, graph)
    rows = np.arange(num_nodes)[:, None]
    adj = np.zeros((num_nodes, num_nodes), bool)
    adj[rows, table] = np.arange(table.shape[1]) < deg[:, None]  # the padding is not an edge
    return adj


def graph_walks(
    key: Any,
    n: int,
    *,
    num_nodes: int = 16,
    length: int = 50,
    degree: int = 3,
    graph: str = "directed",
) -> Dataset:
    """Sample random walks on a random graph (:func:`random_graph`), as next-token sequences.

    A walk starts at a uniform node and steps to a uniform neighbour (out-neighbour when
    directed). The next token's law is a function of the current token alone, so the best
    achievable cross-entropy is the mean of ``log deg(v)`` over the visited nodes
    (``log(degree)`` for ``"directed"``); a network that goes below it on a finite set of walks
    memorises them.

    Args:
      key: a JAX PRNG key or an int seed; the same key gives the same graph and walks (the graph
        is ``random_graph(key, num_nodes, degree=degree, graph=graph)``).
      n: number of walks.
      num_nodes: graph size, the vocabulary of the sequences.
      length: tokens per input sequence (the transformer's context).
      degree: out-degree of every node (``"directed"``) or mean degree (``"undirected"``).
      graph: ``"directed"`` or ``"undirected"`` (Erdos-Renyi, connected).

    Returns:
      A `Dataset` of int32 tokens: ``x = walks[:, :-1]`` and ``y = walks[:, 1:]``, both
      ``(n, length)``.

    Raises:
      ValueError: naming the argument, for bad sizes or a ``degree`` the graph cannot have.

    Example:
      >>> ds = graph_walks(0, 4, num_nodes=8, length=5, graph="undirected")
      >>> adj = random_graph(0, 8, graph="undirected")
      >>> bool(adj[ds.x, ds.y].all())  # every step is an edge
      True
    """
    n = _check_int("n", n, 1)
    length = _check_int("length", length, 1)
    num_nodes, degree, graph = _check_graph(num_nodes, degree, graph)
    rng = _rng(_as_key(key))
    table, deg = _draw_graph(rng, num_nodes, degree, graph)
    walks = np.empty((n, length + 1), np.int32)
    walks[:, 0] = rng.integers(num_nodes, size=n)
    for t in range(length):
        here = walks[:, t]
        walks[:, t + 1] = table[here, rng.integers(deg[here])]
    return Dataset(walks[:, :-1], walks[:, 1:])
