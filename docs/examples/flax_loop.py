"""Sharpness of a flax.linen model in your own optax loop.

A linen module's ``apply(variables, x)`` is all hessian-lab needs: params are the ``variables``
pytree. Lines marked ``# <- hessian-lab`` are the additions.

Run: ``python docs/examples/flax_loop.py``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from hessian_lab import callbacks as cb


class MLP(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.tanh(nn.Dense(self.width)(x)))


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.5):
    """Train a flax MLP with GD; return the per-step sharpness (NaN off-cadence)."""
    kx, ky, ki = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(kx, (n, 5)), jax.random.normal(ky, (n, 1))
    model = MLP()
    params = model.init(ki, x[:1])

    def loss_fn(p, batch):
        bx, by = batch
        return 0.5 * jnp.mean((model.apply(p, bx) - by) ** 2)

    opt = optax.sgd(learning_rate)
    opt_state = opt.init(params)
    sharp = cb.sharpness(loss_fn, (x, y), every=10)  # <- hessian-lab
    cb_state = sharp.init(params)  # <- hessian-lab

    @jax.jit
    def step(t, params, opt_state, cb_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, (x, y))
        info = cb.StepInfo(t, params, opt_state, grads, loss)  # <- hessian-lab
        (cb_state,), m = cb.run_callbacks((sharp,), (cb_state,), info)  # <- hessian-lab
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, cb_state, loss, m["sharpness"]

    out = []
    for t in range(num_steps):
        params, opt_state, cb_state, loss, lam = step(t, params, opt_state, cb_state)
        out.append((loss, lam))
    out = jax.device_get(out)
    for t in range(0, num_steps, 10):
        print(f"step {t:4d}  loss {out[t][0]:.4f}  sharpness {out[t][1]:.3f}")
    return [lam for _, lam in out]


if __name__ == "__main__":
    main()
