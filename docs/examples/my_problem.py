"""Your own network as a plain pytree: the entry point of docs/own_network.md.

``make`` receives the examples ``--data`` names (a ``hessian_lab.data.Dataset``: images NHWC in
[0, 1], integer labels) and returns ``(model, loss, data)``: here an init/apply pair over a dict
of arrays, the MSE on one-hot targets, and the flattened images. ``make_flax`` is the same with
a flax.linen module and cross-entropy.

Run it with the CLI::

    hessian-lab sharpness --problem docs/examples/my_problem.py:make --n 256 --arg width=32 -k 3 --no-density
    hessian-lab sharpness --problem docs/examples/my_problem.py:make_flax --n 256 --json --no-density
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def make(data, width=64, seed=0):
    """A one-hidden-layer tanh MLP on the flattened images, MSE on one-hot targets."""
    x = data.x.reshape(len(data.x), -1)
    y = np.eye(10, dtype=x.dtype)[data.y]

    def init(key):
        k1, k2 = jax.random.split(key)
        return {
            "w1": jax.random.normal(k1, (x.shape[1], width)) / np.sqrt(x.shape[1]),
            "w2": jax.random.normal(k2, (width, 10)) / np.sqrt(width),
        }

    def apply(params, inputs):
        return jnp.tanh(inputs @ params["w1"]) @ params["w2"]

    return (init, apply), "mse", (x, y)


class MLP(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.tanh(nn.Dense(self.width)(x)))


def make_flax(data, width=64):
    """The same network in flax.linen, cross-entropy on the integer labels."""
    x = data.x.reshape(len(data.x), -1)
    return MLP(width), "xent", (x, data.y)
