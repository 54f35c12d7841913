"""Sharpness in your own training loop: plain pytree params + optax.

The lines marked ``# <- hessian-lab`` are all a user adds: build a callback once, keep its
state next to the optimizer state, and call ``run_callbacks`` inside the jitted step. The
callback runs only every ``every`` steps (a ``lax.cond``) and its metrics are NaN otherwise, so
nothing leaves the device until you read the metrics.

Run: ``python docs/examples/plain_loop.py``.
"""

import jax
import jax.numpy as jnp
import optax

import hessian_lab as hl
from hessian_lab import callbacks as cb


def main(num_steps: int = 50, n: int = 64, learning_rate: float = 0.5):
    """Train a 2-layer tanh net with GD and print loss and sharpness every 10 steps."""
    kx, ky, k1, k2 = jax.random.split(jax.random.key(0), 4)
    x, y = jax.random.normal(kx, (n, 5)), jax.random.normal(ky, (n, 1))
    params = {
        "w1": jax.random.normal(k1, (5, 16)) / jnp.sqrt(5.0),
        "w2": jax.random.normal(k2, (16, 1)) / 4.0,
    }

    def loss_fn(p, batch):
        bx, by = batch
        return 0.5 * jnp.mean((jnp.tanh(bx @ p["w1"]) @ p["w2"] - by) ** 2)

    opt = optax.sgd(learning_rate)
    sharp = cb.sharpness(loss_fn, (x, y), every=10, num_iters=20)  # <- hessian-lab
    state = (opt.init(params), sharp.init(params))  # <- hessian-lab: callback state

    @jax.jit
    def step(t, params, state):
        opt_state, cb_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, (x, y))
        info = cb.StepInfo(t, params, opt_state, grads, loss)  # <- hessian-lab
        (cb_state,), metrics = cb.run_callbacks((sharp,), (cb_state,), info)  # <- hessian-lab
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), (opt_state, cb_state), loss, metrics

    log = []
    for t in range(num_steps):
        params, state, loss, metrics = step(t, params, state)
        log.append((loss, metrics["sharpness"]))
    for t, (loss, lam) in enumerate(jax.device_get(log)):
        if t % 10 == 0:
            print(
                f"step {t:4d}  loss {loss:.4f}  sharpness {lam:.3f}  2/eta {2 / learning_rate:.3f}"
            )

    # Or, once, without callbacks: the top Hessian eigenvalue directly.
    top = hl.top_eigs(hl.hvp(loss_fn, params, (x, y)), params, k=1, num_iters=20).values[0]
    print(f"final sharpness {float(top):.3f}")
    return float(top)


if __name__ == "__main__":
    main()
