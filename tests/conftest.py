"""Strict JAX settings for the whole suite: float64 references, rank promotion raises."""

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Return a function that hands out fresh, deterministic PRNG keys."""
    counter = itertools.count()
    base = jax.random.key(0)
    return lambda: jax.random.fold_in(base, next(counter))
