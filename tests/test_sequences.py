"""Linear congruential sequences: the recurrence, the Hull-Dobell full-period set (against a
brute-force search of every (a, c)), determinism, and bad arguments refused by name."""

import numpy as np
import pytest

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
