"""Cost of a cadence-10, 20-iteration Lanczos sharpness callback relative to plain training.

MLP (64-128-10, relu) on sklearn digits (1797 examples), full-batch GD, MSE, float32. Times
exclude compilation (each configuration is run once to warm up). Goal: ratio <= 2. The ratio
is printed, never asserted: it depends on the machine.

Run: ``python benchmarks/bench_callbacks.py [num_steps]``.
"""

import sys
import time

import jax

from hessian_lab import data, losses, models, optim, trainer
from hessian_lab.callbacks import sharpness


def _time(fn, repeats=3):
    fn()  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(num_steps: int = 200):
    ds = data.digits()
    d = (ds.x, ds.y)
    net = models.mlp(64, 10, depth=1, width=128)
    loss_fn = losses.make_loss_fn(net.apply, "mse")
    params = net.init(jax.random.key(0))
    opt = optim.make_optimizer("gd", learning_rate=0.05)

    def run(callbacks):
        r = trainer.train(
            loss_fn, params, opt, d, num_steps=num_steps, chunk_size=100, callbacks=callbacks
        )
        jax.block_until_ready(r.params)
        return r

    base = _time(lambda: run(()))
    print(f"backend {jax.default_backend()}, {num_steps} steps, n={ds.x.shape[0]}")
    print(f"plain GD: {base * 1e3 / num_steps:.3f} ms/step")
    # every=10, num_iters=20 adds 2 Hessian-vector products per step on average; the sparser
    # settings show how the cost scales. On a shared CPU, repeat: timings are noisy.
    for every, iters, lin in [(10, 20, False), (10, 20, True), (40, 20, False), (10, 5, False)]:
        cbs = (sharpness(loss_fn, every=every, num_iters=iters, linearize=lin),)
        t = _time(lambda cbs=cbs: run(cbs))
        print(
            f"+ sharpness(every={every}, num_iters={iters}, linearize={lin}): "
            f"{t * 1e3 / num_steps:.3f} ms/step, ratio {t / base:.2f}x "
            "(goal <= 2x for every=10, num_iters=20)"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
