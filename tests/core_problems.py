"""Tiny problems with pytree parameters, shared by the curvature-core tests."""

import functools

import jax
import jax.numpy as jnp

ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def init_mlp(key, sizes=(3, 5, 4, 2)):
    """A non-trivial pytree: {"w": [W0, W1, ...], "b": (b0, b1, ...)}."""
    keys = jax.random.split(key, len(sizes) - 1)
    ws = [
        jax.random.normal(k, (m, n), jnp.float64) / jnp.sqrt(m)
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    bs = tuple(
        0.1 * jax.random.normal(k, (n,), jnp.float64) for k, n in zip(keys, sizes[1:], strict=True)
    )
    return {"w": ws, "b": bs}


def make_apply(act="tanh"):
    phi = ACTS[act]

    def apply(params, x):
        h = x
        n = len(params["w"])
        for i, (w, b) in enumerate(zip(params["w"], params["b"], strict=True)):
            h = h @ w + b[None, :]
            if i < n - 1:
                h = phi(h)
        return h

    return apply


def mse_out(out, y):
    return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))


def xent_out(out, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(out) * y, axis=-1))


OUTPUT_LOSSES = {"mse": mse_out, "xent": xent_out}


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _draw(key, loss, n, sizes):
    kp, kx, ky = jax.random.split(key, 3)
    params = init_mlp(kp, sizes)
    x = jax.random.normal(kx, (n, sizes[0]), jnp.float64)
    if loss == "mse":
        y = jax.random.normal(ky, (n, sizes[-1]), jnp.float64)
    else:
        y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, sizes[-1]), sizes[-1], dtype=jnp.float64)
    return params, x, y


def make_problem(key, act="tanh", loss="mse", n=10, sizes=(3, 5, 4, 2)):
    """Return (params, apply, output_loss, loss_fn, (x, y))."""
    params, x, y = _draw(key, loss, n, tuple(sizes))
    apply = make_apply(act)
    out_loss = OUTPUT_LOSSES[loss]

    def loss_fn(p, batch):
        return out_loss(apply(p, batch[0]), batch[1])

    return params, apply, out_loss, loss_fn, (x, y)


# The head of a user problem file with a flax linen BatchNorm network (tests of user entry
# points append their own ``make``): Dense(width) - BatchNorm - tanh - Dense(outputs), float64
# under x64.
FLAX_BN_NET = """
import flax.linen as nn
import jax.numpy as jnp
import numpy as np


class Net(nn.Module):
    width: int
    outputs: int
    momentum: float

    @nn.compact
    def __call__(self, x, train: bool):
        dtype = jnp.result_type(float)  # float64 under x64
        h = nn.Dense(self.width, param_dtype=dtype)(x)
        bn = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, param_dtype=dtype)
        return nn.Dense(self.outputs, param_dtype=dtype)(jnp.tanh(bn(h)))
"""
