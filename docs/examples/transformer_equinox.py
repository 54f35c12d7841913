"""Sharpness of your own equinox transformer on generated sequences, as an entry point.

A pre-LayerNorm decoder-only transformer (token and position embeddings, causal self-attention,
an MLP, a linear unembedding), applied to one sequence at a time as equinox modules are, on
linear congruential sequences ``x_{t+1} = (a x_t + c) mod m`` (:func:`hessian_lab.data.
lcg_sequences`, generated offline). ``make`` brings its own data (it declares no ``data``
argument), so ``--data`` stays at its default. An equinox module arrives initialised: its
parameters come from the ``seed`` argument.

Run: ``python docs/examples/transformer_equinox.py``, or on the command line::

    hessian-lab sharpness --problem docs/examples/transformer_equinox.py:make --arg width=16 --n 64 -k 2 --no-density
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import hessian_lab as hl
from hessian_lab import data, problem


class Transformer(eqx.Module):
    """One pre-LN block: ``h += attn(ln(h))``, ``h += mlp(ln(h))``; logits per position."""

    tokens: eqx.nn.Embedding
    positions: eqx.nn.Embedding
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP
    ln_out: eqx.nn.LayerNorm
    unembed: eqx.nn.Linear

    def __init__(self, vocab: int, length: int, width: int, heads: int, *, key):
        k = jax.random.split(key, 5)
        self.tokens = eqx.nn.Embedding(vocab, width, key=k[0])
        self.positions = eqx.nn.Embedding(length, width, key=k[1])
        self.ln1, self.ln2, self.ln_out = (eqx.nn.LayerNorm(width) for _ in range(3))
        self.attn = eqx.nn.MultiheadAttention(heads, width, key=k[2])
        self.mlp = eqx.nn.MLP(width, width, 4 * width, 1, activation=jax.nn.gelu, key=k[3])
        self.unembed = eqx.nn.Linear(width, vocab, key=k[4])

    def __call__(self, seq):
        t = seq.shape[0]
        h = jax.vmap(self.tokens)(seq) + jax.vmap(self.positions)(jnp.arange(t))
        a = jax.vmap(self.ln1)(h)
        h = h + self.attn(a, a, a, mask=jnp.tril(jnp.ones((t, t), bool)))
        h = h + jax.vmap(self.mlp)(jax.vmap(self.ln2)(h))
        return jax.vmap(self.unembed)(jax.vmap(self.ln_out)(h))


def next_token_xent(logits, y):
    """Mean next-token cross-entropy over sequences and positions."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[..., None], axis=-1))


def make(seed=0, n=64, width=16, heads=2, modulus=8, length=8):
    """Entry point: the transformer, its loss and ``n`` LCG sequences (one rule per sequence)."""
    ds = data.lcg_sequences(seed, n, modulus=modulus, length=length)
    model = Transformer(modulus, length, width, heads, key=jax.random.key(seed))
    return model, next_token_xent, (ds.x, ds.y)


def main(n: int = 64, width: int = 16, num_iters: int = 30):
    """Return the top Hessian eigenvalue at initialisation, and the problem (for a reference)."""
    p = problem.build(make, args={"n": n, "width": width}, seed=0)
    params = p.model.init(jax.random.key(0))  # the module's own parameters (it is initialised)

    @jax.jit  # one compiled program for the num_iters products
    def sharpness(params, batch):
        H = hl.full_data_hvp(p.loss_fn, params, batch, chunk_size=n)
        return hl.top_eigs(H, params, num_iters=num_iters).values[0]

    top = float(sharpness(params, p.data))
    print(f"sharpness at initialisation: {top:.4f} ({hl.tree.ravel(params)[0].size} parameters)")
    return {"sharpness": top, "params": params, "problem": p}


if __name__ == "__main__":
    main()
