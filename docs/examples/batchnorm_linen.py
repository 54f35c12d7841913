"""Sharpness of a flax.linen CNN with BatchNorm, trained by hessian-lab's trainer.

``hl.stateful_model`` turns the module into ``init(key) -> params`` and
``apply(params, state, x, *, train, key) -> (outputs, new_state)``; ``hl.stateful_loss`` is the
loss the trainer and the callbacks take. The trainer carries the running statistics (the
``batch_stats`` collection) from step to step; the sharpness is that of the loss the optimizer
sees (BatchNorm on the batch's statistics), the ``eval_loss`` uses the running ones.

Run: ``python docs/examples/batchnorm_linen.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import hessian_lab as hl
from hessian_lab import callbacks as cb
from hessian_lab import optim, trainer


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        dtype = jnp.result_type(float)  # float64 under jax_enable_x64
        h = nn.Conv(4, (3, 3), param_dtype=dtype)(x)
        h = nn.relu(nn.BatchNorm(use_running_average=not train, param_dtype=dtype)(h))
        return nn.Dense(2, param_dtype=dtype)(h.mean(axis=(1, 2)))


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.2):
    """Train with GD; return the final train-mode sharpness and what a reference needs."""
    kx, ky, ki = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(kx, (n, 6, 6, 1)), jax.random.normal(ky, (n, 2))
    model = hl.stateful_model(CNN(), x)
    loss = hl.stateful_loss(model.apply, "mse")
    callbacks = [
        cb.sharpness(loss, every=10),  # train mode: the batch's statistics
        cb.full_loss(loss.with_mode("eval"), name="eval_loss"),  # the running statistics
    ]
    step = trainer.make_step(loss, optim.make_optimizer("gd", learning_rate=learning_rate),
                             callbacks=callbacks)  # fmt: skip
    res = trainer.train(step, model.init(ki), (x, y), num_steps=num_steps, state=model.state)
    for t in range(0, num_steps, 10):
        h = res.history
        print(f"step {t:3d}  loss {h['loss'][t]:.4f}  eval loss {h['eval_loss'][t]:.4f}  "
              f"sharpness {h['sharpness'][t]:.3f}")  # fmt: skip

    # The final point, measured directly: one chunk, the batch statistics of all n examples
    # (mode="eval" would use the running statistics res.state holds).
    @jax.jit
    def sharpness(params, state, data):
        H = hl.full_data_hvp(hl.curvature_loss(loss, state, mode="train"), params, data,
                             chunk_size=n)  # fmt: skip
        return hl.top_eigs(H, params, num_iters=40).values[0]

    top = float(sharpness(res.params, res.state, (x, y)))
    print(f"final sharpness {top:.4f}")

    def loss_at(params):  # the same train-mode loss, in flax's own words
        variables = {"params": params, **res.state}
        out = CNN().apply(variables, x, train=True, mutable=["batch_stats"])[0]
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))

    return {"sharpness": top, "params": res.params, "loss_at": loss_at}


if __name__ == "__main__":
    main()
