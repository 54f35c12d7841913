"""Sharpness of an equinox model in your own optax loop.

Split the model into its array leaves (the params hessian-lab differentiates) and the static
rest with ``eqx.partition``; the loss recombines them. Lines marked ``# <- hessian-lab`` are the
additions. The direct call at the end shows the estimator API without callbacks.

Run: ``python docs/examples/equinox_loop.py``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import hessian_lab as hl
from hessian_lab import callbacks as cb


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.5):
    """Train an equinox MLP with GD; return the final sharpness."""
    kx, ky, km = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(kx, (n, 5)), jax.random.normal(ky, (n, 1))
    model = eqx.nn.MLP(5, 1, width_size=16, depth=1, activation=jnp.tanh, key=km)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(p, batch):
        bx, by = batch
        return 0.5 * jnp.mean((jax.vmap(eqx.combine(p, static))(bx) - by) ** 2)

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
        return eqx.apply_updates(params, updates), opt_state, cb_state, loss, m["sharpness"]

    for t in range(num_steps):
        params, opt_state, cb_state, loss, lam = step(t, params, opt_state, cb_state)
        if t % 10 == 0:
            print(f"step {t:4d}  loss {float(loss):.4f}  sharpness {float(lam):.3f}")

    top = jax.jit(lambda p: hl.top_eigs(hl.hvp(loss_fn, p, (x, y)), p, num_iters=20).values[0])(
        params
    )
    print(f"final sharpness {float(top):.3f}")
    return float(top)


if __name__ == "__main__":
    main()
