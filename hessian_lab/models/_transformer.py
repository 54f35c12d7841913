"""A small decoder-only transformer in pure JAX: causal self-attention, next-token logits."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._base import Model, add_bias, check_float, check_int, float_dtype, normals

_LN_EPS = 1e-5


def _layer_norm(h: jax.Array, p: dict) -> jax.Array:
    """Return ``(h - mean) / sqrt(var + eps) * scale + bias`` over the last axis."""
    mu = h.mean(axis=-1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
    h = (h - mu) / jnp.sqrt(var + _LN_EPS)
    return add_bias(h * jnp.expand_dims(p["scale"], tuple(range(h.ndim - 1))), p["bias"])


def _attention(h: jax.Array, p: dict, num_heads: int) -> jax.Array:
    """Return causal multi-head self-attention of ``h`` with shape ``(batch, T, d)``."""
    b, t, d = h.shape
    dh = d // num_heads
    q, k, v = (jnp.reshape(h @ p[name], (b, t, num_heads, dh)) for name in ("wq", "wk", "wv"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh)
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None, None]
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
    return out @ p["wo"]


def transformer(
    vocab: int,
    *,
    context: int = 50,
    d_model: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    mlp_ratio: int = 4,
    readout_scale: float = 1.0,
) -> Model:
    """Build a pre-LayerNorm decoder-only transformer that returns next-token logits.

    ``h_0 = E[x] + P[:T]``; each block does ``h += Attn(LN(h))`` (causal, ``num_heads`` heads) and
    ``h += W_2 gelu(W_1 LN(h) + b_1) + b_2``; logits are ``LN(h) @ U``. Initialisation: embeddings
    ``E, P ~ N(0, 1)``; every other matrix ``N(0, 1/fan_in)``, with the two residual projections
    (``wo``, ``w2``) further divided by ``sqrt(2 num_layers)`` (GPT-2) so the residual stream stays
    O(1) with depth; ``U ~ N(0, readout_scale^2 / d_model)``, so logits are O(1); biases zero,
    LayerNorm scales one.

    Args:
      vocab: number of tokens; inputs are int tokens in ``[0, vocab)``.
      context: longest sequence ``T`` accepted.
      d_model: width of the residual stream.
      num_layers: number of blocks.
      num_heads: attention heads; must divide ``d_model``.
      mlp_ratio: hidden width of the MLP in units of ``d_model``.
      readout_scale: multiplier of the unembedding's initial standard deviation.

    Returns:
      A `Model`; ``apply(params, x)`` maps int tokens ``(batch, T)`` (or ``(T,)``) with
      ``T <= context`` to logits ``(batch, T, vocab)`` (or ``(T, vocab)``); logits at position
      ``t`` depend only on tokens ``0..t``.

    Raises:
      ValueError: naming the argument, for a size below 1 or ``num_heads`` not dividing ``d_model``
        (at construction), or non-integer tokens or ``T > context`` (at ``apply``).
    """
    vocab = check_int("vocab", vocab, 1)
    context = check_int("context", context, 1)
    d_model = check_int("d_model", d_model, 1)
    num_layers = check_int("num_layers", num_layers, 1)
    num_heads = check_int("num_heads", num_heads, 1)
    mlp_ratio = check_int("mlp_ratio", mlp_ratio, 1)
    readout_scale = check_float("readout_scale", readout_scale)
    if d_model % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide d_model={d_model}")
    d, d_ff = d_model, mlp_ratio * d_model
    res = 1.0 / math.sqrt(2 * num_layers)

    # (name path, shape, std) of every random matrix, drawn in one go by `normals`
    specs = [("embed", (vocab, d), 1.0), ("pos", (context, d), 1.0)]
    for i in range(num_layers):
        specs += [((i, "attn", n), (d, d), 1 / math.sqrt(d)) for n in ("wq", "wk", "wv")]
        specs += [
            ((i, "attn", "wo"), (d, d), res / math.sqrt(d)),
            ((i, "mlp", "w1"), (d, d_ff), 1 / math.sqrt(d)),
            ((i, "mlp", "w2"), (d_ff, d), res / math.sqrt(d_ff)),
        ]
    specs.append(("unembed", (d, vocab), readout_scale / math.sqrt(d)))

    @jax.jit
    def init(key: jax.Array) -> dict:
        dtype = float_dtype()
        z = normals(key, [shape for _, shape, _ in specs])
        w = {name: std * zi for (name, _, std), zi in zip(specs, z, strict=True)}

        def ln() -> dict:
            return {"scale": jnp.ones((d,), dtype), "bias": jnp.zeros((d,), dtype)}

        blocks = []
        for i in range(num_layers):
            attn = {n: w[i, "attn", n] for n in ("wq", "wk", "wv", "wo")}
            mlp = {
                "w1": w[i, "mlp", "w1"],
                "b1": jnp.zeros((d_ff,), dtype),
                "w2": w[i, "mlp", "w2"],
                "b2": jnp.zeros((d,), dtype),
            }
            blocks.append({"ln1": ln(), "attn": attn, "ln2": ln(), "mlp": mlp})
        return {
            "embed": w["embed"],
            "pos": w["pos"],
            "blocks": blocks,
            "ln_f": ln(),
            "unembed": w["unembed"],
        }

    def apply(params: dict, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"x: must hold integer tokens, got dtype {x.dtype}")
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.ndim != 2 or x.shape[1] > context:
            raise ValueError(
                f"x: must have shape (batch, T) with T <= context={context}, got {x.shape}"
            )
        h = params["embed"][x] + params["pos"][None, : x.shape[1]]
        for blk in params["blocks"]:
            h = h + _attention(_layer_norm(h, blk["ln1"]), blk["attn"], num_heads)
            m = blk["mlp"]
            z = jax.nn.gelu(add_bias(_layer_norm(h, blk["ln2"]) @ m["w1"], m["b1"]))
            h = h + add_bias(z @ m["w2"], m["b2"])
        logits = _layer_norm(h, params["ln_f"]) @ params["unembed"]
        return logits[0] if single else logits

    return Model(init, apply)
