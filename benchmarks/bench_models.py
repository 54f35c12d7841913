"""Time and peak memory of curvature products on a BatchNorm CNN and a transformer vs a gradient.

Problems (issue #15 item 5), all float32 with softmax cross-entropy:

- ``cnn``: a flax linen CNN, conv-BatchNorm-relu blocks with 2x2 average pools and a dense
  readout, made stateful by ``hl.stateful_model``; BatchNorm in train mode (the statistics of
  the batch), the loss ``hl.curvature_loss(..., mode="train")``; random NHWC images and labels.
- ``transformer``: ``hl.models.transformer`` (pre-LayerNorm, decoder-only) with next-token
  cross-entropy on random token sequences.
- ``vocab``: the same transformer with GPT-2's vocabulary (50,257) on a few hundred tokens:
  how many logits-sized arrays a product keeps (temporary memory / bytes of one logits array).

Cases, each a jitted function compiled before timing, called with ``block_until_ready``: the
gradient (``jax.grad``); one product as a user calls it, the operator built inside the jitted
function (``hl.hvp``, ``hl.ggn``: "one-shot"); and ``--loop`` products in a jitted ``fori_loop``
with the operator built once outside the loop, as a Lanczos run uses it (``hl.hvp``,
``hl.linearized_hvp``, ``hl.ggn``): per product = loop time / ``--loop``. Times are medians of
``--repeats`` round-robin rounds (``bench_core.timed``), so load bursts hit all cases alike.

Memory: ``compiled.memory_analysis()`` of each executable: arguments + outputs + temporaries -
aliased bytes. XLA preallocates the temporaries as one buffer whose size comes from a heap
simulation of the schedule, so this is the executable's peak (arguments that the function does
not read are pruned by ``jax.jit``, so a gradient is charged only for parameters and data).
``--gpu-peak`` (GPU only) also runs each case in a fresh process and reads the device's
``memory_stats()["peak_bytes_in_use"]`` after one call, the allocator's real peak.

``vocab`` reports each case's temporaries in logits arrays. ``hl.losses.cross_entropy`` writes
its JVP out (``sum((softmax(z) - onehot) * dz) / n``, no ``take_along_axis`` to transpose into a
logits-sized scatter), so the GGN's output-space product is the closed form
``H u = (p * u - p <p, u>) / n`` with ``p = softmax(z)`` per token: the target is a GGN product
that keeps at most one logits array more than a gradient (the outputs and ``J v``).

    python benchmarks/bench_models.py                       # all three, a few minutes
    python benchmarks/bench_models.py --problems vocab      # the logits count only
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
from bench_core import row, timed

import hessian_lab as hl

PROBLEMS = ("cnn", "transformer", "vocab")
GPT2_VOCAB = 50257


def cnn_problem(args, key):
    """A linen BatchNorm CNN in train mode, cross-entropy on random images (module doc)."""
    import flax.linen as nn

    width, depth, classes = args.width, args.depth, args.classes

    class BNCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            h = x
            for i in range(depth):
                h = nn.Conv(width, (3, 3))(h)
                h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
                if i < 2:
                    h = nn.avg_pool(h, (2, 2), strides=(2, 2))
            return nn.Dense(classes)(h.mean(axis=(1, 2)))

    kx, ky, kp = jax.random.split(key, 3)
    x = jax.random.normal(kx, (args.n, args.image, args.image, args.channels))
    y = jax.random.randint(ky, (args.n,), 0, classes)
    model = hl.stateful_model(BNCNN(), x[:1])
    loss = hl.curvature_loss(hl.stateful_loss(model.apply, "xent"), model.state, mode="train")

    def apply(params, x):  # the outputs the train-mode loss sees
        return model.apply(params, model.state, x, train=True, key=None)[0]

    desc = (
        f"flax linen CNN {depth} x (conv3x3 {width} + BatchNorm(train) + relu), "
        f"{args.image}x{args.image}x{args.channels} images, n={args.n}, {classes} classes"
    )
    return desc, loss, apply, hl.losses.cross_entropy, model.init(kp), x, y


def transformer_problem(args, key, vocab, batch, context, d_model, layers):
    """``hl.models.transformer`` with next-token cross-entropy on random tokens."""
    net = hl.models.transformer(
        vocab, context=context, d_model=d_model, num_layers=layers, num_heads=args.heads
    )
    kt, kp = jax.random.split(key)
    tokens = jax.random.randint(kt, (batch, context + 1), 0, vocab)
    x, y = tokens[:, :-1], tokens[:, 1:]
    loss = hl.losses.make_loss_fn(net.apply, "xent")
    desc = (
        f"pre-LN transformer, vocab {vocab}, {layers} layer(s), d_model {d_model}, "
        f"{args.heads} heads, {batch} sequences x {context} tokens"
    )
    # float32 like the other problems: the model's init follows the default float, which
    # bench_core's x64 switch makes float64
    params = jax.tree.map(lambda a: a.astype(jnp.float32), net.init(kp))
    return desc, loss, net.apply, hl.losses.cross_entropy, params, x, y


def build(name, args):
    key = jax.random.key(args.seed)
    if name == "cnn":
        return cnn_problem(args, key)
    if name == "transformer":
        sizes = args.batch, args.context, args.d_model, args.layers
        return transformer_problem(args, key, args.vocab, *sizes)
    sizes = args.big_batch, args.big_context, args.big_d_model, 1
    return transformer_problem(args, key, args.big_vocab, *sizes)


# ---- cases ---------------------------------------------------------------------------------


def cases(name, problem, loop):
    """name -> ``fn(params, x, y, v)`` for every case of a problem (module doc)."""
    _, loss, apply, out_loss, *_ = problem

    def looped(make_op):
        def fn(p, x, y, v):
            op = make_op(p, x, y)
            step = lambda _, u: hl.tree.normalize(op(u))  # noqa: E731
            return jax.lax.fori_loop(0, loop, step, v)

        return fn

    out = {
        "grad": lambda p, x, y, v: jax.grad(loss)(p, (x, y)),
        "hvp": lambda p, x, y, v: hl.hvp(loss, p, (x, y))(v),
        "ggn": lambda p, x, y, v: hl.ggn(apply, out_loss, p, x, y)(v),
    }
    if name == "vocab":
        return out
    out[f"hvp x{loop} in a loop"] = looped(lambda p, x, y: hl.hvp(loss, p, (x, y)))
    out[f"linearized_hvp x{loop} in a loop"] = looped(
        lambda p, x, y: hl.linearized_hvp(loss, p, (x, y))
    )
    out[f"ggn x{loop} in a loop"] = looped(lambda p, x, y: hl.ggn(apply, out_loss, p, x, y))
    return out


def memory(jitted, args):
    """(peak bytes, temporary bytes) of the compiled ``jitted(*args)`` from ``memory_analysis``
    (the executable the timing compiled: served from ``jax.jit``'s cache, not compiled again)."""
    m = jitted.lower(*args).compile().memory_analysis()
    peak = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )
    return peak, m.temp_size_in_bytes


def gpu_peak(argv, name, case):
    """Peak device bytes of one call of ``case``, measured in a fresh process (module doc)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--peak-of", name, case]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def peak_of(args, name, case):
    """Child process of ``--gpu-peak``: run one case once, print the device's peak bytes."""
    problem = build(name, args)
    fn = cases(name, problem, args.loop)[case]
    *_, params, x, y = problem
    v = hl.tree.random_like(jax.random.key(args.seed + 1), params)
    jax.block_until_ready(jax.jit(fn)(params, x, y, v))
    print(jax.devices()[0].memory_stats()["peak_bytes_in_use"])


def run_problem(name, args, argv):
    desc, *_, params, x, y = problem = build(name, args)
    v = hl.tree.random_like(jax.random.key(args.seed + 1), params)
    fns = cases(name, problem, args.loop)
    num_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"\n== {name}: {desc}; {num_params:,} params")
    compiled = {k: jax.jit(f) for k, f in fns.items()}
    times = timed({k: (f, (params, x, y, v)) for k, f in compiled.items()}, repeats=args.repeats)
    mem = {k: memory(f, (params, x, y, v)) for k, f in compiled.items()}
    logits = x.size * args.big_vocab * 4 if name == "vocab" else None
    head = f"  {'case':<34s} {'ms':>9s} {'/ grad':>7s} {'peak MiB':>9s} {'/ grad':>7s}"
    print(head + (f" {'temp / logits':>14s}" if logits else f" {'temp MiB':>9s}"))
    per = {}
    for k, t in times.items():
        loop = " in a loop" in k
        t_one = t / args.loop if loop else t
        per[k] = t_one / times["grad"], mem[k][0] / mem["grad"][0]
        label = f"{k} (per product)" if loop else k
        line = f"  {label:<34s} {t_one * 1e3:9.1f} {per[k][0]:7.2f} "
        line += f"{mem[k][0] / 2**20:9.1f} {per[k][1]:7.2f}"
        line += f" {mem[k][1] / logits:14.2f}" if logits else f" {mem[k][1] / 2**20:9.1f}"
        print(line)
    if logits:
        print(
            f"  one logits array: {x.size} tokens x {args.big_vocab} x 4 B = {logits / 2**20:.1f} MiB"
        )
    if args.gpu_peak:
        base = gpu_peak(argv, name, "grad")
        for k in fns:
            peak = base if k == "grad" else gpu_peak(argv, name, k)
            print(f"  device peak, {k:<32s} {peak / 2**20:9.1f} MiB  {peak / base:5.2f} x grad")
    return per, mem, logits


def summary(results, loop):
    print("\nsummary (measured / target):")
    for name, (per, mem, logits) in results.items():
        for k in ("hvp", f"hvp x{loop} in a loop", f"linearized_hvp x{loop} in a loop"):
            if k in per:
                row(f"{name}: {k} / gradient, time", f"{per[k][0]:.2f}", "<= 2.0", per[k][0] <= 2)
        for k in ("ggn", f"ggn x{loop} in a loop"):
            if k in per:
                row(f"{name}: {k} / gradient, time", f"{per[k][0]:.2f}", "<= 1.6", per[k][0] <= 1.6)
        for k in per:
            if k != "grad" and not k.startswith("grad"):
                r = per[k][1]
                row(f"{name}: {k} / gradient, peak memory", f"{r:.2f}", "<= 2.4", r <= 2.4)
        if logits:
            for k in ("grad", "ggn"):
                c = mem[k][1] / logits
                row(f"{name}: {k}, temporaries in logits arrays", f"{c:.2f}", "<= 2 (*)", c <= 2)
            c = (mem["ggn"][1] - mem["grad"][1]) / logits
            row(f"{name}: ggn - grad, temporaries in logits arrays", f"{c:.2f}", "<= 1", c <= 1)
    if any(logits for *_, logits in results.values()):
        print("  (*) one logits array plus one output-space vector (J v), for a GGN product")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    ap.add_argument("--repeats", type=int, default=5, help="round-robin rounds (median)")
    ap.add_argument("--loop", type=int, default=8, help="products per jitted loop")
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("cnn")
    g.add_argument("--n", type=int, default=256, help="images (one batch, BatchNorm's)")
    g.add_argument("--image", type=int, default=28, help="height = width")
    g.add_argument("--channels", type=int, default=1)
    g.add_argument("--width", type=int, default=32, help="conv channels")
    g.add_argument("--depth", type=int, default=3, help="conv-BN-relu blocks")
    g.add_argument("--classes", type=int, default=10)
    g = ap.add_argument_group("transformer (vocab: the --big-* sizes, one layer)")
    g.add_argument("--vocab", type=int, default=256)
    g.add_argument("--batch", type=int, default=16, help="sequences")
    g.add_argument("--context", type=int, default=64, help="tokens per sequence")
    g.add_argument("--d-model", type=int, default=128)
    g.add_argument("--layers", type=int, default=2)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--big-vocab", type=int, default=GPT2_VOCAB)
    g.add_argument("--big-batch", type=int, default=8)
    g.add_argument("--big-context", type=int, default=64)
    g.add_argument("--big-d-model", type=int, default=64)
    ap.add_argument("--gpu-peak", action="store_true", help="also the device's peak (GPU)")
    ap.add_argument("--peak-of", nargs=2, metavar=("PROBLEM", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peak_of:
        return peak_of(args, *args.peak_of)
    if args.gpu_peak and jax.default_backend() != "gpu":
        ap.error(f"--gpu-peak: needs a GPU, the backend is {jax.default_backend()}")
    load = ", ".join(f"{a:.2f}" for a in os.getloadavg())
    print(
        f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPUs, load average {load}; float32; median of {args.repeats} rounds"
    )
    results = {name: run_problem(name, args, argv) for name in args.problems}
    summary(results, args.loop)
    print(f"load average at the end: {', '.join(f'{a:.2f}' for a in os.getloadavg())}")


if __name__ == "__main__":
    main()
