"""Peer benchmark on a panel: top Hessian eigenvalue with curvlinops + eigsh, PyHessian, hessian-lab.

For each problem of ``panel.py`` (same network, weights, data and loss in JAX and PyTorch, float32)
it times every method at several settings, round-robin (every repeat runs every setting once, so a
burst of load from other processes hits all of them alike), after one warm-up call; times exclude
one-time setup (operator construction, PyHessian's gradient graph, JAX compilation), reported
separately. Hessian-vector products over the whole dataset are counted (hessian-lab's from
``num_matvecs``; it runs with ``exact_residuals=False``, its residual taken from the products
already made, since neither peer spends a product on one either; the peers' by wrapping their
product). Errors are relative to a 60-step float64 Lanczos reference of ``lambda_max``.

Each peer runs at its best settings: torch with 1 and with 2 intra-op threads; ``eigsh`` at
tolerances 1e-2 .. 1e-4 with scipy's Krylov space (``ncv`` 20) and a short one (10); PyHessian
at tolerances 1e-4, 5e-5, 2e-5, 1e-5, 1e-6 (its power iteration on the whole dataset as one
batch, its faster mode). hessian-lab runs its linearised full-data product at 11 .. 20 Lanczos
steps and its chunked one at 15 and 20, from the same random start as eigsh; and its linearised
product at 3 .. 14 steps from ``hl.subsample_start``'s vector (15 Lanczos steps on n/20 or n/10
examples, counted as that fraction of a full product each, and timed with the rest). On a
problem with convolutions it runs every setting twice: on the loss as written and on
``hl.convs_as_matmuls(loss)`` (``--conv`` picks). The
summary takes, per method, the fastest setting whose error is at most ``--target`` (1e-4), and
prints the ratios. Then the floor: the FLOP rate hessian-lab's product reaches (XLA's FLOP count
of a product, over its measured time) beside a plain float32 matrix product's on the same
machine.

Optional extra, never imported by the library or tests:
``pip install torch==2.13.0 curvlinops-for-pytorch pyhessian``.

Run: ``python benchmarks/peers/bench_peers.py --mnist DIR [--problems random_mlp,mnist_mlp,mnist_cnn]
[--n 5000] [--repeats 3] [--threads 1,2]``.
"""

from __future__ import annotations

import argparse
import os
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from panel import PANEL  # noqa: E402

HL_ITERS = tuple(range(11, 21))  # linearised; the chunked product at HL_CHUNKED_ITERS
HL_CHUNKED_ITERS = (15, 20)
HL_SUBSETS = (20, 10)  # hl.subsample_start on n/20 and n/10 examples, 15 steps, then:
HL_WARM_ITERS = (3, 4, 5, 6, 7, 8, 10, 12, 14)  # linearised full-data Lanczos steps from its vector
EIGSH_TOLS = (1e-2, 1e-3, 1e-4)
EIGSH_NCV = (None, 10)  # ARPACK's Krylov space: scipy's default (20 for k=1) and a short one
PYHESSIAN_TOLS = (1e-4, 5e-5, 2e-5, 1e-5, 1e-6)
MATMUL = ", convs as matmuls"  # the suffix of hessian-lab's settings with hl.convs_as_matmuls


def reference(p, *, chunk, iters, dtype):
    """Top-2 and bottom eigenvalue in ``dtype`` (Lanczos, ``iters`` steps)."""
    params, data = jax.tree.map(
        lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a, (p.params, p.data)
    )
    op = hl.full_data_hvp(p.loss, params, data, chunk_size=chunk)
    v0 = hl.tree.random_like(jax.random.key(1), params)
    top = hl.top_eigs(op, v0, k=2, num_iters=iters).values
    bottom = hl.bottom_eigs(op, v0, num_iters=iters).values
    return np.asarray(top, float), float(bottom[0])


def has_convolutions(p):
    """Whether the problem's loss computes a convolution (then it runs in two variants)."""
    return "conv_general_dilated" in str(jax.make_jaxpr(p.loss)(p.params, p.data))


def hessian_lab_cases(p, v0, *, chunk, key, variants):
    """``name -> (run, setup s, compile s)``: the chunked and linearised products from ``v0``,
    and the linearised one from :func:`hl.subsample_start`'s vector (its subset products
    counted as ``size / n`` of a full one each); for each ``(suffix, loss)`` of ``variants`` (the
    loss as written, and with ``hl.convs_as_matmuls`` where it has convolutions)."""
    cases = {}
    n = jax.tree.leaves(p.data)[0].shape[0]
    settings = [(False, chunk, iters, None) for iters in HL_CHUNKED_ITERS]
    settings += [(True, n, iters, None) for iters in HL_ITERS]
    settings += [(True, n, iters, n // d) for d in HL_SUBSETS for iters in HL_WARM_ITERS]
    for suffix, loss in variants:
        for lin, size, iters, subset in settings:

            def fn(params, data, v, lin=lin, size=size, iters=iters, subset=subset, loss=loss):
                op = hl.full_data_hvp(loss, params, data, chunk_size=size, linearize=lin)
                if subset is None:
                    return hl.top_eigs(op, v, k=1, num_iters=iters, exact_residuals=False), 0
                start = hl.subsample_start(loss, params, data, key, size=subset)
                out = hl.top_eigs(op, start.vector, k=1, num_iters=iters, exact_residuals=False)
                return out, start.num_matvecs

            t = time.perf_counter()
            compiled = jax.jit(fn).lower(p.params, p.data, v0).compile()
            t_compile = time.perf_counter() - t

            def run(compiled=compiled, subset=subset):
                out, sub = jax.block_until_ready(compiled(p.params, p.data, v0))
                products = int(out.num_matvecs) + (0 if subset is None else int(sub) * subset / n)
                return float(out.values[0]), products

            mode = "linearized" if lin else f"chunk {chunk}"
            start = "" if subset is None else f" from a {subset}-example start"
            cases[f"hessian-lab {iters} steps{start}, {mode}{suffix}"] = (run, 0.0, t_compile)
    return cases


def curvlinops_cases(p, start, *, chunk, threads):
    from curvlinops import HessianLinearOperator

    x, y = p.torch_data
    batches = [(x[i : i + chunk], y[i : i + chunk]) for i in range(0, x.shape[0], chunk)]
    torch.set_num_threads(threads)
    t = time.perf_counter()
    H = HessianLinearOperator(p.model, p.curvlinops_loss, list(p.model.parameters()), batches)
    H = H.to_scipy()
    t_setup = time.perf_counter() - t
    count = [0]

    def mv(v):
        count[0] += 1 if v.ndim == 1 else v.shape[1]
        return H @ v

    op = spla.LinearOperator(H.shape, matvec=mv, matmat=mv, dtype=H.dtype)
    v0 = np.asarray(start, H.dtype)
    cases = {}
    for tol in EIGSH_TOLS:
        for ncv in EIGSH_NCV:

            def run(tol=tol, ncv=ncv):
                torch.set_num_threads(threads)
                count[0] = 0
                vals = spla.eigsh(
                    op, k=1, which="LA", tol=tol, v0=v0, ncv=ncv, return_eigenvectors=False
                )
                return float(vals[-1]) * p.curvlinops_scale, count[0]

            space = "" if ncv is None else f" ncv={ncv}"
            cases[f"curvlinops + eigsh tol={tol:g}{space}, {threads} thr"] = (run, t_setup, 0.0)
    return cases


def pyhessian_cases(p, *, threads, seed):
    import pyhessian  # noqa: F401  (its __init__ shadows the submodule by the class)

    ph = sys.modules["pyhessian.hessian"]
    counter = [0]
    if not hasattr(ph, "_bench_original"):
        ph._bench_original = ph.hessian_vector_product

        def counted(*a, **kw):
            counter[0] += 1
            return ph._bench_original(*a, **kw)

        ph.hessian_vector_product = counted
        ph._bench_counter = counter
    counter = ph._bench_counter
    torch.set_num_threads(threads)
    # PyHessian builds its graph with loss.backward(create_graph=True), which *adds* into
    # p.grad: a second object built on the same model would see the sum of both gradients
    p.model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    H = ph.hessian(p.model, p.criterion, data=p.torch_data, cuda=False)
    t_setup = time.perf_counter() - t
    cases = {}
    for tol in PYHESSIAN_TOLS:

        def run(tol=tol):
            torch.set_num_threads(threads)
            counter[0] = 0
            torch.manual_seed(seed)  # PyHessian draws its start vector from torch's global RNG
            return float(H.eigenvalues(maxIter=500, tol=tol, top_n=1)[0][0]), counter[0]

        cases[f"PyHessian tol={tol:g}, {threads} thr"] = (run, t_setup, 0.0)
    return cases


def matmul_rate(size=2048, repeats=5):
    """GFLOP/s of a ``size``-cubed float32 matrix product in JAX: the CPU's practical peak."""
    a = jnp.ones((size, size), jnp.float32)
    f = jax.jit(lambda a, b: a @ b).lower(a, a).compile()
    jax.block_until_ready(f(a, a))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def product_flops(p, loss, v0):
    """XLA's FLOP count of one linearised product: a program that linearises and takes two
    products, minus one that linearises and takes one. (Not an HVP's minus a gradient's: a
    jvp-of-grad that returns only the tangent never computes the primal weight gradients, so
    that difference undercounts the product by a third.)"""
    w = jax.tree.map(lambda a: a[::-1] if a.ndim else a, v0)  # another vector: no CSE

    def flops(fn):
        return jax.jit(fn).lower(p.params, p.data).compile().cost_analysis()["flops"]

    def products(params, data, vs):
        lin = jax.linearize(lambda q: jax.grad(loss)(q, data), params)[1]
        return [lin(v) for v in vs]

    return flops(lambda q, d: products(q, d, (v0, w))) - flops(lambda q, d: products(q, d, (v0,)))


def run_problem(p, args):
    n = jax.tree.leaves(p.data)[0].shape[0]
    chunk = min(args.chunk_size, n)
    num_params = sum(a.size for a in jax.tree.leaves(p.params))
    dtypes = {str(a.dtype) for a in jax.tree.leaves((p.params, p.data[0]))}
    assert dtypes == {"float32"}, f"the JAX side must be float32 like torch's, got {dtypes}"
    print(f"\n## {p.name}: {p.description}; {num_params:,} parameters", flush=True)
    t = time.perf_counter()
    top2, lam_min = reference(p, chunk=chunk, iters=args.ref_iters, dtype=args.ref_dtype)
    lam = top2[0]
    print(
        f"reference ({args.ref_dtype} Lanczos, {args.ref_iters} steps, "
        f"{time.perf_counter() - t:.0f} s): "
        f"lambda_1 = {lam:.8g}, lambda_2 / lambda_1 = {top2[1] / lam:.3f}, "
        f"|lambda_min| / lambda_1 = {abs(lam_min) / lam:.3f}",
        flush=True,
    )
    v0 = hl.tree.random_like(jax.random.key(args.seed), p.params)
    start = np.asarray(hl.tree.ravel(v0)[0])
    conv = args.conv if has_convolutions(p) else ["native"]  # no convolution: one variant
    choices = {"native": ("", p.loss), "matmul": (MATMUL, hl.convs_as_matmuls(p.loss))}
    variants = [choices[c] for c in conv]
    cases = hessian_lab_cases(
        p, v0, chunk=chunk, key=jax.random.key(args.seed + 1), variants=variants
    )
    for threads in args.threads:
        cases |= curvlinops_cases(p, start, chunk=chunk, threads=threads)
        cases |= pyhessian_cases(p, threads=threads, seed=args.seed)
    results = {}  # warm-up: value, matvecs
    for name, (run, _, _) in cases.items():
        t = time.perf_counter()
        results[name] = run()
        print(f"  warm-up {name}: {time.perf_counter() - t:.2f} s", flush=True)
    times = {name: [] for name in cases}
    for r in range(args.repeats):
        for name, (run, _, _) in cases.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
        print(f"  repeat {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.1f}", flush=True)
    print(
        f"\n{'method':60s} {'setup s':>7s} {'compile s':>9s} {'time s':>7s} {'matvecs':>7s} "
        f"{'rel err':>8s}"
    )
    rows = []
    for name, (_, setup, comp) in cases.items():
        value, matvecs = results[name]
        err = abs(value - lam) / abs(lam)
        t_run = statistics.median(times[name])
        rows.append((name, t_run, err))
        print(f"{name:60s} {setup:7.2f} {comp:9.2f} {t_run:7.3f} {matvecs:7.4g} {err:8.1e}")
    best = {}
    for family in ("hessian-lab", "curvlinops", "PyHessian"):
        ok = [(t, name) for name, t, err in rows if name.startswith(family) and err <= args.target]
        best[family] = min(ok) if ok else (float("nan"), "(none reached the target)")
        print(f"best {family} at {args.target:g}: {best[family][0]:.3f} s  [{best[family][1]}]")
    ours = best["hessian-lab"][0]
    rate = matmul_rate()
    for suffix, loss in variants:
        per_product, name_lin = min(
            (t / results[name][1], name)
            for name, t, _ in rows
            if name.endswith(f"linearized{suffix}") and "start" not in name
        )
        gflop = product_flops(p, loss, v0) / 1e9
        print(
            f"floor: a linearised product{suffix} is {gflop:.2f} GFLOP (XLA's count); at "
            f"{per_product * 1e3:.0f} ms each ({name_lin}) that is "
            f"{gflop / per_product:.0f} GFLOP/s; a float32 2048^3 matrix product here runs at "
            f"{rate:.0f} GFLOP/s",
            flush=True,
        )
    print(
        f"RATIO {p.name}: curvlinops / hessian-lab = {best['curvlinops'][0] / ours:.1f}x, "
        f"PyHessian / hessian-lab = {best['PyHessian'][0] / ours:.1f}x "
        f"(load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=",".join(PANEL), help="comma-separated panel names")
    ap.add_argument("--mnist", default=None, help="directory of the MNIST IDX files")
    ap.add_argument("--n", type=int, default=5000, help="examples per problem")
    ap.add_argument("--chunk-size", type=int, default=1000, help="examples per chunk/batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to try")
    ap.add_argument("--target", type=float, default=1e-4, help="relative error of lambda_max")
    ap.add_argument("--ref-iters", type=int, default=60)
    ap.add_argument(
        "--ref-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="the reference's precision (XLA:CPU's float64 convolutions are slow: float32 with "
        "40 steps is converged far below the 1e-4 target, and eigsh's value checks it)",
    )
    ap.add_argument(
        "--conv",
        default="native,matmul",
        help="hessian-lab's variants on a problem with convolutions: the loss as written "
        "(native) and with hl.convs_as_matmuls (matmul); comma-separated",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.conv = [c.strip() for c in args.conv.split(",") if c.strip()]
    if not args.conv or set(args.conv) - {"native", "matmul"}:
        ap.error(f"--conv: got {args.conv}; allowed: native, matmul (comma-separated)")
    args.threads = [int(t) for t in args.threads.split(",")]
    names = [s.strip() for s in args.problems.split(",") if s.strip()]
    unknown = [s for s in names if s not in PANEL]
    if unknown:
        ap.error(f"--problems: unknown {unknown}; choose from {list(PANEL)}")
    print(
        f"jax {jax.__version__}, torch {torch.__version__}; torch threads {args.threads}; "
        f"n={args.n}, chunk {args.chunk_size}, float32; load {os.getloadavg()[0]:.1f}"
    )
    for name in names:
        if name.startswith("mnist") and args.mnist is None:
            print(f"\n## {name}: skipped (no --mnist DIR)")
            continue
        run_problem(PANEL[name](args.n, args.seed, args.mnist), args)


if __name__ == "__main__":
    main()
