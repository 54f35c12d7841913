"""Strict JAX settings for the whole suite: float64 references, rank promotion raises.

The tests run tiny problems, so compiling dominates them: XLA's LLVM back end runs without
optimisation here (it costs about a fifth of the suite's CPU time; the HLO passes, fusion
included, still run). Set ``XLA_FLAGS`` yourself to test with the optimised back end.
"""

import itertools
import os

os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # after XLA_FLAGS: XLA reads it when the backend starts
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Return a function that hands out fresh, deterministic PRNG keys."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))
