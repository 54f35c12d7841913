"""Sharpness of a flax.nnx CNN with BatchNorm and dropout, as a problem entry point.

``problem.build(..., stateful=True)`` turns the module into a ``StatefulModel`` and a
``StatefulLoss``, with the initial ``BatchStat`` s as ``p.state``. Training applies dropout
(``dropout=True``, a key per step from the run's key); the sharpness of the trained network is
measured with dropout off and BatchNorm on the statistics of the measured batch (a
``cb.sharpness(loss)`` callback would measure the same along the way).

Run: ``python docs/examples/batchnorm_nnx.py``.
"""

import jax
import jax.numpy as jnp
from flax import nnx

import hessian_lab as hl
from hessian_lab import optim, problem, trainer


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        dtype = jnp.result_type(float)  # float64 under jax_enable_x64
        self.conv = nnx.Conv(1, 4, (3, 3), param_dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(4, param_dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(4, 2, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.conv(x)))).mean(axis=(1, 2)))


def make(n=64, seed=0):
    """The entry point: ``(model, loss, data)``."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x, y = jax.random.normal(kx, (n, 6, 6, 1)), jax.random.normal(ky, (n, 2))
    return CNN(nnx.Rngs(seed)), "mse", (x, y)


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.2):
    """Train with GD (dropout on); return the final sharpness (dropout off, batch statistics)."""
    p = problem.build(make, args={"n": n}, stateful=True)
    loss = hl.stateful_loss(p.model.apply, "mse", dropout=True)  # train with dropout
    opt = optim.make_optimizer("gd", learning_rate=learning_rate)
    step = trainer.make_step(loss, opt)
    params = p.model.init(None)  # nnx modules arrive initialised
    res = trainer.train(step, params, p.data, num_steps=num_steps, state=p.state)
    for t in range(0, num_steps, 10):
        print(f"step {t:3d}  loss {res.history['loss'][t]:.4f}")

    @jax.jit
    def sharpness(params, state, data):  # dropout off, the batch statistics of all n examples
        H = hl.full_data_hvp(hl.curvature_loss(loss, state), params, data, chunk_size=n)
        return hl.top_eigs(H, params, num_iters=40).values[0]

    top = float(sharpness(res.params, res.state, p.data))
    print(f"final sharpness {top:.4f}")

    graphdef = nnx.graphdef(make(n=1)[0])

    def loss_at(params):  # the same loss in nnx's own words: train mode, dropout off
        m = nnx.merge(graphdef, params, res.state, copy=True)
        m.train()
        m.drop.deterministic = True
        x, y = p.data
        return 0.5 * jnp.mean(jnp.sum((m(x) - y) ** 2, axis=-1))

    return {"sharpness": top, "params": res.params, "loss_at": loss_at}


if __name__ == "__main__":
    main()
