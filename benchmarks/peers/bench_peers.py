"""Peer benchmark: top Hessian eigenvalues with curvlinops + eigsh, PyHessian and hessian-lab.

The same MLP 3072-64-64-64-64-10 (tanh, 209,802 parameters) and the same ``n`` random float32
samples in PyTorch and JAX, per-example MSE ``0.5 mean_i ||f(x_i) - y_i||^2`` over the whole
dataset. Each method runs after its one-time setup (operator construction, JAX compilation,
reported separately) and is timed as the median of ``--repeats`` runs; matvecs (Hessian-vector
products over the full dataset) are counted. Errors are relative to a 60-step float64 Lanczos
reference of ``lambda_max`` (and of the top ``--k``).

Optional extra, never imported by the library or tests:
``pip install torch==2.13.0 curvlinops-for-pytorch pyhessian``.

Run: ``python benchmarks/peers/bench_peers.py [--n 5000] [--repeats 3] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # the reference is float64; the rest is float32

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402
import torch  # noqa: E402

import hessian_lab as hl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_core import LAYOUTS, init_mlp, make_loss, start_vector  # noqa: E402


def torch_mlp(params, layout):
    """The JAX params as a torch.nn.Sequential (weights copied; torch stores ``(out, in)``)."""
    layers = []
    for i, layer in enumerate(params):
        w = np.asarray(layer["w"])
        w = w if layout == "oi" else w.T  # (out, in)
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.copy()))
            lin.bias.copy_(torch.from_numpy(np.asarray(layer["b"]).copy()))
        layers.append(lin)
        if i < len(params) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).eval()


def median_time(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--chunk-size", type=int, default=1000, help="examples per chunk/batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--k", type=int, default=3, help="top-k compared for eigsh and top_eigs")
    ap.add_argument("--ref-iters", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--layout", choices=LAYOUTS, default="oi", help="JAX weight storage (bench_core.init_mlp)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # PyHessian draws its start vector from torch's global RNG

    sizes = (3072, 64, 64, 64, 64, 10)
    f32 = jnp.float32
    kp, kx, ky, kv = jax.random.split(jax.random.key(args.seed), 4)
    params = init_mlp(kp, sizes, f32, args.layout)
    x = jax.random.normal(kx, (args.n, sizes[0]), f32)
    y = jax.random.normal(ky, (args.n, sizes[-1]), f32)
    data, c = (x, y), args.chunk_size
    loss = make_loss("tanh", args.layout)
    v0 = start_vector(kv, params, args.layout)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    print(
        f"MLP {sizes}, tanh, {num_params:,} parameters, n={args.n}, chunk {c}, float32; "
        f"jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads)"
    )

    # reference: float64 Lanczos with many steps
    p64, d64, v64 = jax.tree.map(lambda a: a.astype(jnp.float64), (params, data, v0))
    ref_fn = jax.jit(
        lambda p, d, v: (
            hl.top_eigs(
                hl.full_data_hvp(loss, p, d, chunk_size=c), v, k=args.k, num_iters=args.ref_iters
            ).values
        )
    )
    t = time.perf_counter()
    ref = np.asarray(ref_fn(p64, d64, v64), float)
    bottom = hl.bottom_eigs(hl.full_data_hvp(loss, p64, d64, chunk_size=c), v64, num_iters=60)
    lam_min = float(bottom.values[0])
    print(
        f"reference (float64 Lanczos, {args.ref_iters} steps, {time.perf_counter() - t:.1f} s): "
        f"top {args.k} = {ref}, lambda_min = {lam_min:.6g}"
    )
    lam = ref[0]
    rows = []  # (method, setup s, compile s, time s, matvecs, rel err lambda_max, value)

    def rel(v):
        return abs(float(v) - lam) / abs(lam)

    # hessian-lab: jitted top_eigs on full_data_hvp, chunked (memory constant in n), and with
    # the gradient linearised once over the whole dataset as one chunk (PyHessian's memory
    # mode: its single-batch graph)
    settings = [(10, 1, c, False), (15, 1, c, False), (20, 1, c, False), (30, args.k, c, False)]
    settings += [(15, 1, args.n, True), (20, 1, args.n, True)]
    for iters, k, chunk, lin in settings:
        fn = jax.jit(
            lambda p, d, v, iters=iters, k=k, chunk=chunk, lin=lin: (
                hl.top_eigs(
                    hl.full_data_hvp(loss, p, d, chunk_size=chunk, linearize=lin),
                    v,
                    k=k,
                    num_iters=iters,
                ).values
            )
        )
        t = time.perf_counter()
        compiled = fn.lower(params, data, v0).compile()
        t_compile = time.perf_counter() - t
        jax.block_until_ready(compiled(params, data, v0))  # warm-up
        t_run, vals = median_time(
            lambda compiled=compiled: jax.block_until_ready(compiled(params, data, v0)),
            args.repeats,
        )
        vals = np.asarray(vals, float)
        mode = f"linearized, chunk {chunk}" if lin else f"chunk {chunk}"
        print(f"  done: hessian-lab {iters} steps, {mode}, {t_run:.3f} s", flush=True)
        rows.append(
            (
                f"hessian-lab top_eigs k={k}, {iters} steps, {mode}",
                0.0,
                t_compile,
                t_run,
                iters,
                rel(vals[0]),
                vals,
            )
        )

    # curvlinops: HessianLinearOperator + scipy eigsh(which="LA")
    from curvlinops import HessianLinearOperator

    model = torch_mlp(params, args.layout)
    xt, yt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y))
    batches = [(xt[i : i + c], yt[i : i + c]) for i in range(0, args.n, c)]
    # MSELoss(mean) averages over n * 10 outputs; our loss is 0.5 mean_i sum_o: 5x larger.
    scale = 0.5 * sizes[-1]
    t = time.perf_counter()
    H_cl = HessianLinearOperator(
        model, torch.nn.MSELoss(reduction="mean"), list(model.parameters()), batches
    ).to_scipy()
    t_setup = time.perf_counter() - t
    count = [0]

    def mv(v):
        count[0] += 1 if v.ndim == 1 else v.shape[1]
        return H_cl @ v

    op = spla.LinearOperator(H_cl.shape, matvec=mv, matmat=mv, dtype=H_cl.dtype)
    start = hl.tree.ravel(v0)[0]
    start = np.asarray(start, H_cl.dtype)
    for k, tol in [(1, 1e-4), (1, 0.0), (args.k, 0.0)]:
        count[0] = 0

        def run(k=k, tol=tol):
            count[0] = 0
            return spla.eigsh(op, k=k, which="LA", tol=tol, v0=start, return_eigenvectors=False)

        t_run, vals = median_time(run, args.repeats)
        vals = np.sort(np.asarray(vals, float) * scale)[::-1]
        print(f"  done: eigsh k={k} tol={tol:g}, {t_run:.3f} s, {count[0]} matvecs", flush=True)
        rows.append(
            (
                f"curvlinops + eigsh k={k}, tol={tol:g}",
                t_setup,
                0.0,
                t_run,
                count[0],
                rel(vals[0]),
                vals,
            )
        )

    # PyHessian: power iteration on the whole dataset as one batch (its cheaper mode: the
    # gradient graph is built once and reused by every product)
    import pyhessian  # noqa: F401  (its __init__ shadows the submodule by the class)

    ph = sys.modules["pyhessian.hessian"]

    counter = [0]
    hvp_orig = ph.hessian_vector_product

    def counted(*a, **kw):
        counter[0] += 1
        return hvp_orig(*a, **kw)

    ph.hessian_vector_product = counted

    def criterion(out, target):
        return 0.5 * ((out - target) ** 2).sum(dim=-1).mean()

    t = time.perf_counter()
    H_ph = ph.hessian(model, criterion, data=(xt, yt), cuda=False)
    t_setup = time.perf_counter() - t
    for tol in (1e-3, 1e-4, 1e-5, 1e-6):

        def run(tol=tol):
            counter[0] = 0
            torch.manual_seed(args.seed)
            return H_ph.eigenvalues(maxIter=300, tol=tol, top_n=1)[0]

        t_run, vals = median_time(run, args.repeats)
        vals = np.asarray(vals, float)
        print(f"  done: PyHessian tol={tol:g}, {t_run:.3f} s, {counter[0]} matvecs", flush=True)
        rows.append(
            (
                f"PyHessian eigenvalues tol={tol:g}",
                t_setup,
                0.0,
                t_run,
                counter[0],
                rel(vals[0]),
                vals,
            )
        )

    print(
        f"\n{'method':58s} {'setup s':>8s} {'compile s':>9s} {'time s':>8s} {'matvecs':>8s} "
        f"{'rel err':>9s}  values"
    )
    for name, su, co, tr, mvs, err, vals in rows:
        print(
            f"{name:58s} {su:8.2f} {co:9.2f} {tr:8.3f} {mvs:8d} {err:9.1e}  "
            + " ".join(f"{v:.7g}" for v in vals)
        )
    if len(ref) > 1:
        for name, *_, vals in rows:
            if len(vals) == len(ref):
                err = np.max(np.abs(vals - ref)) / abs(lam)
                print(f"top-{len(ref)} max error / lambda_max, {name}: {err:.1e}")
    print(
        f"|lambda_min| / lambda_max = {abs(lam_min) / lam:.3g} (PyHessian's power iteration "
        "finds the largest-|lambda| eigenvalue; it is lambda_max only when this is < 1)"
    )


if __name__ == "__main__":
    main()
