"""Sharpness of your own flax ResNet with BatchNorm, as an entry point and from Python.

``make`` is an entry point (docs/own_network.md): it receives the examples ``--data`` names
(images NHWC in [0, 1], integer labels) and returns ``(model, loss, data)``. The model holds
state (BatchNorm statistics), so its curvature is measured in one of two honest modes: ``train``
(BatchNorm on the statistics of the measured examples, the loss the optimizer sees; the data as
one chunk) or ``eval`` (the running statistics).

Run: ``python docs/examples/resnet_flax.py``, or on the command line::

    hessian-lab sharpness --problem docs/examples/resnet_flax.py:make --n 128 -k 2 --no-density
    hessian-lab sharpness --problem docs/examples/resnet_flax.py:make --n 128 --mode eval --no-density
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import hessian_lab as hl
from hessian_lab import data, problem


class Block(nn.Module):
    """A residual block: conv-BN-relu-conv-BN, plus the identity."""

    width: int

    @nn.compact
    def __call__(self, x, train: bool):
        dtype = jnp.result_type(float)  # float64 under jax_enable_x64
        norm = lambda: nn.BatchNorm(use_running_average=not train, param_dtype=dtype)  # noqa: E731
        h = nn.relu(norm()(nn.Conv(self.width, (3, 3), use_bias=False, param_dtype=dtype)(x)))
        h = norm()(nn.Conv(self.width, (3, 3), use_bias=False, param_dtype=dtype)(h))
        return nn.relu(x + h)


class ResNet(nn.Module):
    """A conv stem, ``blocks`` residual blocks, global average pooling, a linear readout."""

    width: int = 8
    blocks: int = 1
    classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool):
        dtype = jnp.result_type(float)
        h = nn.Conv(self.width, (3, 3), param_dtype=dtype)(x)
        for _ in range(self.blocks):
            h = Block(self.width)(h, train)
        return nn.Dense(self.classes, param_dtype=dtype)(h.mean(axis=(1, 2)))


def make(data, width=8, blocks=1):
    """Entry point: the ResNet on the images, cross-entropy on the integer labels."""
    return ResNet(width, blocks), "xent", (data.x, data.y)


def main(n: int = 128, width: int = 8, blocks: int = 1, num_iters: int = 30):
    """Return the top Hessian eigenvalue at initialisation in train and eval mode, and the
    problem (what a reference needs)."""
    p = problem.build(make, data=data.load_data("digits", n=n),
                      args={"width": width, "blocks": blocks}, stateful=True)  # fmt: skip
    params = p.model.init(jax.random.key(0))

    @jax.jit(static_argnames="mode")  # one compiled program per mode
    def sharpness(params, state, batch, mode):
        loss_fn = hl.curvature_loss(p.loss_fn, state, mode=mode)
        H = hl.full_data_hvp(loss_fn, params, batch, chunk_size=n)  # one chunk: train-mode BN
        return hl.top_eigs(H, params, num_iters=num_iters).values[0]

    top = {}
    for mode in ("train", "eval"):
        top[mode] = float(sharpness(params, p.state, p.data, mode=mode))
        print(f"{mode}-mode sharpness at initialisation: {top[mode]:.4f}")
    return {"sharpness": top, "params": params, "problem": p}


if __name__ == "__main__":
    main()
