"""Token sequences. Linear congruential: the recurrence, the Hull-Dobell full-period set (against a
brute-force search of every (a, c)). Graph walks: every step an edge of `random_graph`, every edge
taken, the undirected walk's law against its exact propagation and the stationary law
deg(v) / 2|E| (chi-square). Both: determinism, and bad arguments refused by name."""

import numpy as np
import pytest
from scipy import stats

from hessian_lab import data
from hessian_lab.data._sequences import full_period_lcgs


def _period(a: int, c: int, m: int) -> int:
    x, seen = 0, {}
    for t in range(m + 1):
        if x in seen:
            return t - seen[x]
        seen[x], x = t, (a * x + c) % m
    return m + 1


@pytest.mark.parametrize("m", [2, 8, 9, 12, 16, 30])
def test_full_period_pairs_are_exactly_those_of_period_m(m):
    brute = sorted((a, c) for a in range(m) for c in range(m) if _period(a, c, m) == m)
    assert full_period_lcgs(m).tolist() == [list(p) for p in brute]


def test_lcg_sequences_follow_their_rule():
    ds = data.lcg_sequences(3, 50, modulus=16, length=20)
    assert ds.x.shape == ds.y.shape == (50, 20) and ds.x.dtype == np.int32
    np.testing.assert_array_equal(ds.x[:, 1:], ds.y[:, :-1])  # y is x shifted by one token
    pairs = full_period_lcgs(16)
    for x, y in zip(ds.x, ds.y, strict=True):
        rules = [(a, c) for a, c in pairs if np.array_equal((a * x + c) % 16, y)]
        assert rules, "no full-period rule generates this sequence"
        assert len(set(x[:16].tolist())) == 16  # full period: all residues in 16 steps
    fixed = data.lcg_sequences(0, 4, modulus=10, length=7, multiplier=3, increment=7)
    np.testing.assert_array_equal((3 * fixed.x + 7) % 10, fixed.y)
    again = data.lcg_sequences(3, 50, modulus=16, length=20)
    np.testing.assert_array_equal(again.x, ds.x)
    other = data.lcg_sequences(4, 50, modulus=16, length=20)
    assert not np.array_equal(other.x, ds.x)


def test_lcg_sequences_refuse_bad_arguments_by_name():
    for kw, field in (
        ({"modulus": 1}, "modulus"),
        ({"length": 0}, "length"),
        ({"multiplier": 3}, "multiplier"),
        ({"multiplier": 16, "increment": 1}, "multiplier"),
        ({"multiplier": 1, "increment": -1}, "increment"),
    ):
        with pytest.raises(ValueError, match=f"^{field}"):
            data.lcg_sequences(0, 2, **kw)
    with pytest.raises(ValueError, match=r"^n:"):
        data.lcg_sequences(0, 0)


def test_directed_walks_follow_a_fixed_out_degree_graph():
    ds = data.graph_walks(3, 64, num_nodes=12, length=20, degree=3)
    assert ds.x.shape == ds.y.shape == (64, 20) and ds.x.dtype == np.int32
    np.testing.assert_array_equal(ds.x[:, 1:], ds.y[:, :-1])  # y is x shifted by one
    adj = data.random_graph(3, 12, degree=3)
    np.testing.assert_array_equal(adj.sum(axis=1), 3)  # exactly `degree` out-neighbours
    assert adj[ds.x, ds.y].all()  # every step is an edge of the same key's graph
    again = data.graph_walks(3, 64, num_nodes=12, length=20, degree=3)
    np.testing.assert_array_equal(again.x, ds.x)


def _connected(adj):
    reach = np.linalg.matrix_power(np.eye(len(adj)) + adj, len(adj))
    return bool((reach > 0).all())


def test_undirected_graph_is_a_connected_simple_graph():
    for seed in range(5):
        adj = data.random_graph(seed, 20, degree=3, graph="undirected")
        assert adj.dtype == bool and adj.shape == (20, 20)
        np.testing.assert_array_equal(adj, adj.T)
        assert not adj.diagonal().any() and _connected(adj)
    # mean degree: p = degree / (num_nodes - 1), over many draws (connected ones are denser)
    degrees = [data.random_graph(s, 40, degree=8, graph="undirected").sum() / 40 for s in range(20)]
    assert abs(np.mean(degrees) - 8) < 0.5


def test_undirected_walks_take_edges_uniformly_and_reach_the_stationary_law():
    key, nodes, n, length = 5, 10, 4000, 40
    ds = data.graph_walks(key, n, num_nodes=nodes, length=length, degree=3, graph="undirected")
    adj = data.random_graph(key, nodes, degree=3, graph="undirected")
    walks = np.concatenate([ds.x, ds.y[:, -1:]], axis=1)
    np.testing.assert_array_equal(walks[:, 1:], ds.y)
    assert adj[ds.x, ds.y].all()  # every step is an edge
    taken = np.zeros_like(adj)
    taken[ds.x.ravel(), ds.y.ravel()] = True
    np.testing.assert_array_equal(taken, adj)  # and every edge, both ways, is taken
    # exact law of the walk at time t: uniform start times the transition matrix D^-1 A
    deg = adj.sum(axis=1)
    step = adj / deg[:, None]
    laws = [np.full(nodes, 1.0 / nodes)]
    for _ in range(length):
        laws.append(laws[-1] @ step)
    # half the walks give their node at t = length, half at t = length - 1: n independent draws
    # from the mean of the two laws, which is stationary even on a bipartite (periodic) graph
    law = (laws[-1] + laws[-2]) / 2
    stationary = deg / deg.sum()  # deg(v) / 2|E|
    assert np.abs(law - stationary).max() < 1e-3
    ends = np.concatenate([walks[: n // 2, -1], walks[n // 2 :, -2]])
    counts = np.bincount(ends, minlength=nodes)
    assert stats.chisquare(counts, n * stationary).pvalue > 1e-3
    # and the uniform neighbour choice: from each node, every neighbour about equally often
    for v in np.flatnonzero(deg > 1):
        nxt = ds.y[ds.x == v]
        hits = np.bincount(nxt, minlength=nodes)[adj[v]]
        assert stats.chisquare(hits).pvalue > 1e-4
    # a wrong law is rejected by the same test (the test can fail)
    assert stats.chisquare(counts, np.full(nodes, n / nodes)).pvalue < 1e-3


def test_graph_walks_same_key_same_data():
    kw = dict(num_nodes=9, length=12, degree=3, graph="undirected")
    a, b = data.graph_walks(7, 30, **kw), data.graph_walks(7, 30, **kw)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(data.graph_walks(8, 30, **kw).x, a.x)
    np.testing.assert_array_equal(
        data.random_graph(7, 9, degree=3, graph="undirected"),
        data.random_graph(7, 9, degree=3, graph="undirected"),
    )


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"graph": "bipartite"}, "graph"),
        ({"num_nodes": 3, "degree": 4}, "degree"),
        ({"num_nodes": 4, "degree": 4, "graph": "undirected"}, "degree"),
        ({"num_nodes": 1, "degree": 1, "graph": "undirected"}, "num_nodes"),
        ({"num_nodes": 40, "degree": 1, "graph": "undirected"}, "degree"),  # never connected
        ({"degree": 0}, "degree"),
        ({"length": 0}, "length"),
        ({"num_nodes": 2.5}, "num_nodes"),
    ],
)
def test_graph_walks_refuse_bad_arguments_by_name(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        data.graph_walks(0, 2, **kw)
    with pytest.raises(ValueError, match=r"^n:"):
        data.graph_walks(0, 0)
    if "length" not in kw:
        with pytest.raises(ValueError, match=f"^{field}:"):
            data.random_graph(0, **kw)
