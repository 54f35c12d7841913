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


@pytest.fixture
def tiny_cnn(getkey):
    """Return ``make(depth) -> (loss_fn, params, (x, y))``: a tanh CNN on 8 random 8x8 images.

    ``hl.models.cnn`` with width 2 and 3 outputs, mean squared error against random targets;
    small enough for a dense Hessian.
    """
    import jax.numpy as jnp

    import hessian_lab as hl

    def make(depth):
        net = hl.models.cnn((8, 8, 1), 3, depth=depth, width=2, activation="tanh")
        params = net.init(getkey())
        x = jax.random.normal(getkey(), (8, 8, 8, 1))
        y = jax.random.normal(getkey(), (8, 3))

        def loss_fn(p, batch):
            return 0.5 * jnp.mean(jnp.sum((net.apply(p, batch[0]) - batch[1]) ** 2, -1))

        return loss_fn, params, (x, y)

    return make
