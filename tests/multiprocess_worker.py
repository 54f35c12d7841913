"""One process of tests/test_multiprocess.py: ``python multiprocess_worker.py PID N PORT OUT``.

Joins a localhost ``jax.distributed`` job of N CPU processes (one device each, gloo collectives),
holds only its own slice of the examples, and writes the sharded full-data HVP, the top
eigenvalues and the Hutchinson trace of the problem in :func:`problem` to ``OUT`` (JSON).
"""

import json
import sys

import jax
import numpy as np


def problem(dtype: str = "float64"):
    """A tiny tanh MLP and 24 examples, the same in every process and in the test."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 5)), rng.normal(size=(24, 3))
    params = {"w1": rng.normal(size=(5, 6)) / np.sqrt(5), "w2": rng.normal(size=(6, 3)) / 3}

    def loss(p, batch):
        h = jnp.tanh(batch[0] @ p["w1"])
        return 0.5 * jnp.mean(jnp.sum((h @ p["w2"] - batch[1]) ** 2, axis=-1))

    v = {"w1": np.cos(np.arange(30.0)).reshape(5, 6), "w2": np.sin(np.arange(18.0)).reshape(6, 3)}
    cast = lambda tree: jax.tree.map(lambda a: np.asarray(a, dtype), tree)  # noqa: E731
    return loss, cast(params), cast((x, y)), cast(v)


POP_LRS, POP_SEEDS = np.array([0.05, 30.0, 0.5, 0.2]), np.array([0, 1, 2, 0])  # one diverges


def population_run(mode: str, members: int):
    """A population of an MLP on 24 examples: ``members`` of :data:`POP_LRS`, 16 GD steps."""
    from hessian_lab import losses, models, optim, population

    net = models.mlp(4, 2, depth=1, width=8, activation="tanh")
    loss = losses.make_loss_fn(net.apply, "mse")
    rng = np.random.default_rng(1)
    data = (rng.normal(size=(24, 4)), rng.normal(size=(24, 2)))
    pstep = population.make_step(loss, optim.make_optimizer("gd", learning_rate=0.1), mode=mode,
                                 chunk_size=8)  # fmt: skip
    return population.train_population(
        pstep, net.init, data, learning_rates=POP_LRS[:members], seeds=POP_SEEDS[:members],
        num_steps=16, divergence_threshold=1e3,
    )  # fmt: skip


def main(pid: int, n: int, port: int, out: str) -> None:
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=n, process_id=pid)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import hessian_lab as hl

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    local_copy = lambda a: np.asarray(a.addressable_data(0))  # noqa: E731  (replicated results)
    result = {"process_count": jax.process_count()}
    for dtype in ("float64", "float32"):
        loss, params, (x, y), v = problem(dtype)
        m = x.shape[0] // n  # this process holds examples [pid m, (pid + 1) m) only
        local = slice(pid * m, (pid + 1) * m)
        data = tuple(jax.make_array_from_process_local_data(sharding, a[local]) for a in (x, y))
        H = hl.sharded_full_data_hvp(loss, params, data, mesh=mesh, chunk_size=4)
        hv = jax.tree.map(local_copy, H(v))
        eig = hl.top_eigs(H, v, k=2, num_iters=20)
        tr = hl.trace(H, jax.random.key(3), v, num_matvecs=12)
        result[dtype] = {
            "hv": {k: a.tolist() for k, a in hv.items()},
            "eigs": local_copy(eig.values).tolist(),
            "trace": float(local_copy(tr.value)),
        }
    # members split over the processes' devices: 4 on 2 (even) and 3 (padded to 4)
    for members in (4, 3):
        pop = population_run("sharded", members)
        result[f"pop{members}_loss"] = np.asarray(pop.metrics["loss"]).tolist()
        result[f"pop{members}_diverged"] = np.asarray(pop.diverged).tolist()
    with open(out, "w") as f:
        json.dump(result, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
