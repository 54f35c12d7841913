"""Strict JAX settings for the whole suite: float64 references, rank promotion raises.

The tests run tiny problems, so compiling dominates them: XLA's LLVM back end runs without
optimisation here (it costs about a fifth of the suite's CPU time; the HLO passes, fusion
included, still run), and XLA:CPU emits the fused kernels with its older elemental emitter
instead of the MLIR fusion emitters (the same fusion decisions, compiled in about half the time:
four compile-heavy tests took 26 s of CPU instead of 44 s, jax 0.10.2). Set ``XLA_FLAGS``
yourself to test with the default or the optimised back end; if a jax upgrade drops one of these
flags, XLA stops at start-up naming it: take it out here.
"""

import itertools
import os

os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)

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
