"""Sharpness of an equinox CNN with BatchNorm in your own optax loop.

Build the model with ``eqx.nn.make_with_state`` (BatchNorm with ``axis_name="batch"``), hand
``(model, state)`` to ``hl.stateful_model`` (it vmaps the per-example model over the batch), and
keep the state beside the optimizer state. The callback reads it from ``StepInfo.state`` and
measures the loss the optimizer sees: BatchNorm on the batch's statistics. Lines marked
``# <- hessian-lab`` are the additions to a plain equinox loop.

Run: ``python docs/examples/batchnorm_equinox.py``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import hessian_lab as hl
from hessian_lab import callbacks as cb


class CNN(eqx.Module):
    conv: eqx.nn.Conv2d
    norm: eqx.nn.BatchNorm
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        dtype = jnp.result_type(float)  # float64 under jax_enable_x64
        self.conv = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.norm = eqx.nn.BatchNorm(4, axis_name="batch", mode="ema", dtype=dtype)
        self.out = eqx.nn.Linear(4, 2, key=k2)

    def __call__(self, x, state, *, key=None):  # one example, channels first
        h, state = self.norm(self.conv(x), state)
        return self.out(jax.nn.relu(h).mean(axis=(1, 2))), state


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.2):
    """Train with GD; return the final sharpness and what a reference needs."""
    kx, ky, km = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(kx, (n, 1, 6, 6)), jax.random.normal(ky, (n, 2))
    model, state = eqx.nn.make_with_state(CNN)(km)
    net = hl.stateful_model((model, state), x)  # <- hessian-lab
    loss = hl.stateful_loss(net.apply, "mse")  # <- hessian-lab
    params = net.init(None)  # the model's arrays (eqx.partition)

    opt = optax.sgd(learning_rate)
    opt_state = opt.init(params)
    sharp = cb.sharpness(loss, (x, y), every=10)  # <- hessian-lab
    cb_state = sharp.init(params)  # <- hessian-lab

    @jax.jit
    def step(t, params, state, opt_state, cb_state):
        def train_loss(p):
            return loss.fn(p, state, (x, y), train=True)  # (loss, new state)

        (value, new_state), grads = jax.value_and_grad(train_loss, has_aux=True)(params)
        info = cb.StepInfo(t, params, opt_state, grads, value, state=state)  # <- hessian-lab
        (cb_state,), m = cb.run_callbacks((sharp,), (cb_state,), info)  # <- hessian-lab
        updates, opt_state = opt.update(grads, opt_state)
        params = eqx.apply_updates(params, updates)
        return params, new_state, opt_state, cb_state, value, m["sharpness"]

    for t in range(num_steps):
        params, state, opt_state, cb_state, value, lam = step(t, params, state, opt_state, cb_state)
        if t % 10 == 0:
            print(f"step {t:3d}  loss {float(value):.4f}  sharpness {float(lam):.3f}")

    @jax.jit
    def sharpness(params, state, data):  # the batch statistics of all n examples
        H = hl.full_data_hvp(hl.curvature_loss(loss, state), params, data, chunk_size=n)
        return hl.top_eigs(H, params, num_iters=40).values[0]

    top = float(sharpness(params, state, (x, y)))
    print(f"final sharpness {top:.4f}")
    static = eqx.partition(model, eqx.is_inexact_array)[1]

    def loss_at(p):  # the same train-mode loss in equinox's own words
        batched = jax.vmap(eqx.combine(p, static), axis_name="batch", in_axes=(0, None),
                           out_axes=(0, None))  # fmt: skip
        return 0.5 * jnp.mean(jnp.sum((batched(x, state)[0] - y) ** 2, axis=-1))

    return {"sharpness": top, "params": params, "loss_at": loss_at}


if __name__ == "__main__":
    main()
