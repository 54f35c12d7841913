"""Curvature-core benchmark: HVP cost, Lanczos overhead, compile time, accuracy, memory.

Model: MLP 3072-64-64-64-64-10 (tanh by default), per-example MSE, ``n`` random float32
samples, written inline with plain jax. Every ratio is measured in the same run, after a
warm-up call, with ``block_until_ready``, as the median of ``--repeats`` calls. Targets are
printed next to the measurements, never asserted: they depend on the machine.

Measured:
  1. full-data HVP time / full-batch gradient time             (target <= 1.6)
  2. jitted 20-step Lanczos time / (20 x HVP time)              (target <= 1.2)
  3. compile time of the jitted Lanczos / of one jitted HVP     (target <= 2)
  4. relative error of lambda_max vs a float64 reference, as a function of matvecs, for
     ``top_eigs``, ``power_iteration`` and scipy's ``eigsh``    (target 1e-4 within 20 for Lanczos)
  5. temporary memory of the compiled full-data HVP at n and 10 n, same chunk size
                                                                 (target within +20%)

Run: ``python benchmarks/bench_core.py [--n 5000] [--chunk-size 1000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

# The reference eigenvalue is computed in float64; everything else is explicitly float32.
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

import hessian_lab as hl  # noqa: E402

ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


LAYOUTS = ("oi", "io")


def init_mlp(key, sizes, dtype, layout="oi"):
    """Dense layers ``W ~ N(0, 1/m)``, zero biases; ``layout`` is how a weight is stored.

    ``"oi"``: ``(out, in)``, applied as ``h @ W.T`` -- how ``torch.nn.Linear`` stores it, and
    the faster layout for this model on XLA:CPU (jax 0.10): its weight gradient for the
    3072 x 64 input layer is ``delta^T x`` (64 x 3072 out), which XLA computes 2-3x faster
    than ``x^T delta`` (3072 x 64 out), the form ``"io"`` (``(in, out)``, ``h @ W``) produces.
    Same draws in both layouts, so the function is the same.
    """
    keys = jax.random.split(key, len(sizes) - 1)
    layers = [
        {
            "w": (jax.random.normal(k, (m, n), dtype) / np.sqrt(m)).astype(dtype),
            "b": jnp.zeros((n,), dtype),
        }
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    return _swap(layers, layout)


def _swap(layers, layout):
    """(in, out) <-> the storage ``layout`` (a transpose of every weight for "oi")."""
    return [{"w": l["w"].T if layout == "oi" else l["w"], "b": l["b"]} for l in layers]


def start_vector(key, params, layout="oi"):
    """A normal random vector drawn in the (in, out) shapes, then stored like the weights.

    Both layouts thus start Lanczos from the same vector, so they run the same iteration (the
    draw is otherwise shape-dependent, and a start vector's overlap with the top eigenvector
    sets how many steps Lanczos needs).
    """
    return _swap(hl.tree.random_like(key, _swap(params, layout)), layout)


def make_loss(act, layout="oi"):
    phi = ACTS[act]

    def loss(params, batch):
        x, y = batch
        h = x
        for i, layer in enumerate(params):
            h = (h @ layer["w"].T if layout == "oi" else h @ layer["w"]) + layer["b"][None, :]
            if i < len(params) - 1:
                h = phi(h)
        return 0.5 * jnp.mean(jnp.sum((h - y) ** 2, axis=-1))

    return loss


def timed(cases, *, repeats):
    """Median wall time of each ``fn(*args)`` in ``cases`` (name -> (fn, args)).

    Each is called once first (compiles, warms up); then the cases run round-robin, so a burst
    of load from other processes hits all of them alike and the ratios stay meaningful.
    """
    for fn, args in cases.values():
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (fn, args) in cases.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def compile_times(fns, *args, repeats=15):
    """Per-repeat (process CPU time, wall time) of ``jax.jit(fn).lower(*args).compile()``.

    The functions are compiled round-robin, so every repeat yields one *pair* of measurements
    taken under the same machine load: a ratio is reported as the median of the per-pair ratios
    (on a shared 2-core VM a single compile varies by +-25%, and medians of separate runs drift
    apart). A fresh wrapper per repeat defeats jit's caches, so every repeat traces and
    compiles. CPU time sums XLA's compile threads.
    """
    out = {name: [] for name in fns}
    for fn in fns.values():  # warm up JAX's and XLA's one-time initialisation
        jax.jit(lambda *a, fn=fn: fn(*a)).lower(*args).compile()
    for _ in range(repeats):
        for name, fn in fns.items():
            fresh = lambda *a, fn=fn: fn(*a)  # noqa: E731
            t, w = time.process_time(), time.perf_counter()
            jax.jit(fresh).lower(*args).compile()
            out[name].append((time.process_time() - t, time.perf_counter() - w))
    return out


def pair_ratio(num, den, which):
    """Median and range of the per-repeat ratios ``num / den`` (which: 0 CPU, 1 wall time)."""
    ratios = sorted(a[which] / b[which] for a, b in zip(num, den, strict=True))
    return statistics.median(ratios), ratios[0], ratios[-1]


def row(name, value, target, ok):
    flag = "ok" if ok else "MISSED"
    print(f"  {name:<52s} {value:>10s}   target {target:<10s} {flag}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="number of samples")
    ap.add_argument("--chunk-size", type=int, default=1000, help="full-data HVP chunk size")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4, help="hidden layers")
    ap.add_argument("--in-dim", type=int, default=3072)
    ap.add_argument("--out-dim", type=int, default=10)
    ap.add_argument("--activation", choices=sorted(ACTS), default="tanh")
    ap.add_argument("--layout", choices=LAYOUTS, default="io", help="weight storage, see init_mlp")
    ap.add_argument("--starts", type=int, default=5, help="start vectors for the accuracy test")
    ap.add_argument("--num-iters", type=int, default=20, help="Lanczos steps timed")
    ap.add_argument("--ref-iters", type=int, default=60, help="float64 reference Lanczos steps")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 40])
    ap.add_argument("--memory-factor", type=int, default=10, help="n multiplier for memory")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile-repeats", type=int, default=15, help="interleaved compile pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    f32 = jnp.float32
    sizes = (args.in_dim, *([args.width] * args.depth), args.out_dim)
    kp, kx, ky, kv = jax.random.split(jax.random.key(args.seed), 4)
    params = init_mlp(kp, sizes, f32, args.layout)
    x = jax.random.normal(kx, (args.n, args.in_dim), f32)
    y = jax.random.normal(ky, (args.n, args.out_dim), f32)
    data = (x, y)
    v0 = start_vector(kv, params, args.layout)
    loss = make_loss(args.activation, args.layout)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    c = args.chunk_size
    print(
        f"backend {jax.default_backend()} ({jax.device_count()} device(s), "
        f"{jax.devices()[0].device_kind}); MLP {'-'.join(map(str, sizes))} {args.activation}, "
        f"weights stored {args.layout}, "
        f"{num_params} params, n={args.n}, chunk_size={c}, float32; median of {args.repeats}"
    )

    grad_fn = jax.jit(jax.grad(loss))

    def hvp_fn(p, d, v, chunk):
        return hl.full_data_hvp(loss, p, d, chunk_size=chunk)(v)

    hvp_c = jax.jit(lambda p, d, v: hvp_fn(p, d, v, c))
    hvp_1 = jax.jit(lambda p, d, v: hvp_fn(p, d, v, args.n))

    def lanczos_fn(p, d, v, num_iters, chunk=c, linearize=False):
        H = hl.full_data_hvp(loss, p, d, chunk_size=chunk, linearize=linearize)
        return hl.top_eigs(H, v, k=1, num_iters=num_iters).values[0]

    lanczos = jax.jit(lambda p, d, v: lanczos_fn(p, d, v, args.num_iters))

    lanczos_lin = jax.jit(lambda p, d, v: lanczos_fn(p, d, v, args.num_iters, linearize=True))

    def hvp_loop(p, d, v):
        # num_iters products in one jitted loop: "num_iters x HVP" under the same conditions as
        # the Lanczos run (one dispatch, same duration, so bursts of load hit both alike).
        H = hl.full_data_hvp(loss, p, d, chunk_size=c)
        step = lambda _, u: hl.tree.normalize(H(u))  # noqa: E731
        return jax.lax.fori_loop(0, args.num_iters, step, v)

    hvp_n = jax.jit(hvp_loop)

    # ---- 1-2: times -------------------------------------------------------------------------
    t = timed(
        {
            "grad": (grad_fn, (params, data)),
            "hvp": (hvp_c, (params, data, v0)),
            "hvp1": (hvp_1, (params, data, v0)),
        },
        repeats=args.repeats,
    )
    t_grad, t_hvp, t_hvp1 = t["grad"], t["hvp"], t["hvp1"]
    t = timed(
        {
            "hvp": (hvp_c, (params, data, v0)),
            "hvp_n": (hvp_n, (params, data, v0)),
            "lanczos": (lanczos, (params, data, v0)),
            "lanczos_lin": (lanczos_lin, (params, data, v0)),
        },
        repeats=max(args.repeats // 2, 2),
    )
    t_hvp2, t_hvpn, t_lan = t["hvp"], t["hvp_n"], t["lanczos"]
    t_lanl = t["lanczos_lin"]
    print("\ntimes (ms):")
    print(f"  full-batch gradient                     {t_grad * 1e3:9.1f}")
    print(f"  full-data HVP, chunk_size={c:<6d}       {t_hvp * 1e3:9.1f}")
    print(f"  full-data HVP, one chunk of {args.n:<6d}     {t_hvp1 * 1e3:9.1f}")
    print(
        f"  top_eigs, {args.num_iters} Lanczos steps              {t_lan * 1e3:9.1f}"
        f"   (HVP in the same round-robin: {t_hvp2 * 1e3:.1f})"
    )
    print(f"  {args.num_iters} HVPs in one jitted loop             {t_hvpn * 1e3:9.1f}")
    print(
        f"  top_eigs, {args.num_iters} steps, linearize=True        {t_lanl * 1e3:9.1f}"
        f"   (gradient linearised once: {t_lan / t_lanl:.2f}x faster)"
    )

    # ---- 3: compile times ---------------------------------------------------------------------
    ct = compile_times(
        {
            "hvp": lambda p, d, v: hvp_fn(p, d, v, c),
            "lanczos": lambda p, d, v: lanczos_fn(p, d, v, args.num_iters),
        },
        params,
        data,
        v0,
        repeats=args.compile_repeats,
    )
    med = {k: [statistics.median(t[i] for t in ts) * 1e3 for i in (0, 1)] for k, ts in ct.items()}
    print(
        f"\ncompile times, median of {args.compile_repeats}, CPU (wall) in ms: "
        f"HVP {med['hvp'][0]:.0f} ({med['hvp'][1]:.0f}), "
        f"Lanczos {med['lanczos'][0]:.0f} ({med['lanczos'][1]:.0f})"
    )

    # ---- 4: accuracy vs matvecs ---------------------------------------------------------------
    p64, d64, v64 = jax.tree.map(lambda a: a.astype(jnp.float64), (params, data, v0))
    ref_fn = jax.jit(lambda p, d, v: lanczos_fn(p, d, v, args.ref_iters, chunk=args.n))
    t = time.perf_counter()
    lam_ref = float(ref_fn(p64, d64, v64))
    t_ref = time.perf_counter() - t
    print(
        f"\nreference lambda_max = {lam_ref:.10g} (float64 Lanczos, {args.ref_iters} steps, "
        f"{t_ref:.1f} s)"
    )

    flat0, unravel = hl.tree.ravel(v0)
    hvp_flat = jax.jit(lambda p, d, x: hl.tree.ravel(hvp_fn(p, d, unravel(x), c))[0])

    def eigsh_at(ncv=None, tol=0.0):
        count = [0]

        def mv(xv):
            count[0] += 1
            return np.asarray(hvp_flat(params, data, jnp.asarray(xv.ravel(), f32)))

        op = spla.LinearOperator((num_params, num_params), matvec=mv, dtype=np.float32)
        try:
            vals = spla.eigsh(
                op,
                k=1,
                which="LA",
                v0=np.asarray(flat0),
                ncv=ncv,
                tol=tol,
                maxiter=1000,
                return_eigenvectors=False,
            )
        except spla.ArpackNoConvergence as e:
            vals = e.eigenvalues
        val = float(np.max(vals)) if len(vals) else float("nan")
        return val, count[0]

    def rel(v):
        return abs(v - lam_ref) / abs(lam_ref)

    # The error at a fixed budget depends on the start vector's overlap with the top
    # eigenvector, so it is measured over --starts random start vectors (the first is v0).
    starts = [v0] + [
        start_vector(jax.random.fold_in(kv, s), params, args.layout) for s in range(1, args.starts)
    ]
    print(
        f"\nrelative error of lambda_max vs matvecs (float32 operator), median [max] over "
        f"{len(starts)} start vectors:"
    )
    print(f"  {'matvecs':>8s} {'top_eigs':>20s} {'power_iter':>20s}")
    lan_err = {}
    for m in args.budgets:
        # the timed Lanczos run is this budget's run too: reuse its compiled function
        lan = (
            lanczos if m == args.num_iters else jax.jit(lambda p, d, v, m=m: lanczos_fn(p, d, v, m))
        )
        pw = jax.jit(
            lambda p, d, v, m=m: hl.power_iteration(
                hl.full_data_hvp(loss, p, d, chunk_size=c), v, num_iters=max(m - 2, 2)
            ).values[0]
        )
        e_l = [rel(float(lan(params, data, v))) for v in starts]
        e_p = [rel(float(pw(params, data, v))) for v in starts]
        lan_err[m] = statistics.median(e_l), max(e_l)
        print(
            f"  {m:8d} {statistics.median(e_l):11.2e} [{max(e_l):.1e}] "
            f"{statistics.median(e_p):11.2e} [{max(e_p):.1e}]"
        )
    # ARPACK returns nothing until its own convergence test passes, so it cannot be stopped at a
    # fixed budget: vary its basis size and tolerance and count the products it used.
    print("  scipy eigsh(which='LA', k=1) on the same jitted HVP:")
    for ncv, tol in [(5, 1e-4), (10, 1e-4), (20, 1e-2), (20, 1e-4), (20, 0.0)]:
        lam_e, n_e = eigsh_at(ncv=ncv, tol=tol)
        print(f"    ncv={ncv:<3d} tol={tol:<7g}: rel. error {rel(lam_e):.2e} after {n_e} matvecs")

    # ---- 5: memory ---------------------------------------------------------------------------
    def temp_bytes(n):
        d = (
            jax.ShapeDtypeStruct((n, args.in_dim), f32),
            jax.ShapeDtypeStruct((n, args.out_dim), f32),
        )
        compiled = jax.jit(lambda p, d, v: hvp_fn(p, d, v, c)).lower(params, d, v0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    n_big = args.n * args.memory_factor
    # at n, the HVP timed above: jit's cache hands back its executable (no second compile)
    mem_small = hvp_c.lower(params, data, v0).compile().memory_analysis().temp_size_in_bytes
    mem_big = temp_bytes(n_big)
    print(
        f"\nfull-data HVP temporary memory (chunk_size={c}): n={args.n}: "
        f"{mem_small / 2**20:.1f} MiB, n={n_big}: {mem_big / 2**20:.1f} MiB "
        f"(dataset arguments: {args.n * (args.in_dim + args.out_dim) * 4 / 2**20:.0f} and "
        f"{n_big * (args.in_dim + args.out_dim) * 4 / 2**20:.0f} MiB, not included)"
    )

    # ---- summary -----------------------------------------------------------------------------
    print("\nsummary (measured / target):")
    r1 = t_hvp / t_grad
    row(f"HVP / gradient (chunk_size={c})", f"{r1:.2f}", "<= 1.6", r1 <= 1.6)
    r1b = t_hvp1 / t_grad
    row(f"HVP / gradient (one chunk of {args.n})", f"{r1b:.2f}", "<= 1.6", r1b <= 1.6)
    r2 = t_lan / (args.num_iters * t_hvp2)
    row(
        f"{args.num_iters}-step Lanczos / ({args.num_iters} x HVP)",
        f"{r2:.2f}",
        "<= 1.2",
        r2 <= 1.2,
    )
    r2b = t_lan / t_hvpn
    row(
        f"{args.num_iters}-step Lanczos / {args.num_iters}-HVP loop",
        f"{r2b:.2f}",
        "<= 1.2",
        r2b <= 1.2,
    )
    for which, clock in enumerate(("CPU", "wall")):
        r3, lo, hi = pair_ratio(ct["lanczos"], ct["hvp"], which)
        row(
            f"compile ({clock} time): Lanczos / HVP [range {lo:.2f}-{hi:.2f}]",
            f"{r3:.2f}",
            "<= 2",
            r3 <= 2,
        )
    m20 = min((m for m in args.budgets if m >= 20), default=max(args.budgets))
    e, e_max = lan_err[m20]
    row(f"top_eigs rel. error at {m20} matvecs (median)", f"{e:.1e}", "<= 1e-4", e <= 1e-4)
    row(
        f"top_eigs rel. error at {m20} matvecs (worst start)",
        f"{e_max:.1e}",
        "<= 1e-4",
        e_max <= 1e-4,
    )
    r5 = mem_big / mem_small
    row(f"HVP temp memory n={n_big} / n={args.n}", f"{r5:.2f}", "<= 1.2", r5 <= 1.2)


if __name__ == "__main__":
    main()
