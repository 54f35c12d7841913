"""Numerics of the block-spectra study: the three problems, and per-block spectra in one program.

* :func:`make_problem` -- the transformer on next-token cross-entropy over seeded sequences
  (linear congruential or graph walks), or the MLP / CNN on digits with cross-entropy;
* :func:`matrix_blocks` -- one block per weight tensor (``ndim >= 2``) or per leaf, as masks;
* :func:`masked_spectra` -- per block: top-``k`` eigenvalues and SLQ nodes and weights of the
  diagonal block ``H_bb``, all blocks through one compiled program;
* :func:`densities` -- every block's SLQ density on one grid with one Gaussian width.

Why masks, not :func:`hessian_lab.block_spectra`: that function runs eagerly and builds a new
operator per block (:func:`hessian_lab.block_operator`), so each block compiles its own
Lanczos scans; on the 2-layer transformer that is ~30 compiles of a transformer HVP (a 1-layer,
9-block model took 7 minutes on the shared 2-core machine). Here the block is an *argument*: the
operator ``v -> m * H (m * v)`` (``m`` the block's 0/1 mask over all parameters) acts on the full
parameter vector, and a Krylov space started inside the block stays there, so Lanczos on it is
Lanczos on ``H_bb`` (for ``num_iters`` at most the block size). All blocks share one program. The
grid, width and Jensen-Shannon distances follow :func:`hessian_lab.block_spectra` exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import hessian_lab as hl
from hessian_lab import data as hd
from hessian_lab import losses, models
from hessian_lab import tree as tu

# the Lanczos tridiagonalisation of a flat operator (full reorthogonalisation), for SLQ probes
# drawn inside a block; hl.spectral_density draws its probes over the whole vector
from hessian_lab._lanczos import tridiagonal_eigh, tridiagonalize
from hessian_lab.problem import Problem

from . import problems_builtin

__all__ = ["Spectra", "densities", "make_model", "make_problem", "masked_spectra"]
__all__ += ["matrix_blocks", "mean_offdiagonal"]

ARCHS = ("transformer", "mlp", "cnn")


def make_model(arch: str, c) -> models.Model:
    """The ``arch`` network of config ``c`` (see :func:`make_problem`)."""
    if arch == "transformer":
        return problems_builtin.sequence_transformer(c)
    kw = dict(depth=c.depth, width=c.width, activation="relu")
    if arch == "mlp":
        return models.mlp(64, 10, **kw)
    if arch == "cnn":
        return models.cnn((8, 8, 1), 10, **kw)
    raise ValueError(f"arch: must be one of {ARCHS}, got {arch!r}")


def make_problem(arch: str, c) -> Problem:
    """The ``arch`` problem of config ``c`` (a block_spectra Config) at its initialisation seed.

    Transformer: ``models.transformer(vocab, context, d_model, num_layers, num_heads)`` on
    ``n_sequences`` sequences (``data.lcg_sequences`` with modulus ``vocab`` or
    ``data.graph_walks`` on ``vocab`` nodes, seeded by ``seed``), mean next-token cross-entropy
    over all positions. MLP / CNN: ``models.mlp(64, 10, depth, width)`` /
    ``models.cnn((8, 8, 1), 10, depth, width)``, relu, SP, on the first ``n_digits`` digits
    (standardised per feature), cross-entropy on the labels.
    """
    dtype = jnp.result_type(float)
    if arch == "transformer":
        ds = problems_builtin.token_sequences(
            c.sequences, c.seed, c.n_sequences, vocab=c.vocab, context=c.context
        )
        desc = (
            f"transformer {c.num_layers} x d={c.d_model} ({c.num_heads} heads) on "
            f"{c.n_sequences} {c.sequences} sequences (vocab {c.vocab}, length {c.context})"
        )
    elif arch in ("mlp", "cnn"):
        ds = hd.digits(n=c.n_digits, flatten=arch == "mlp", one_hot=False, standardize="feature")
        ds = hd.Dataset(ds.x.astype(dtype), ds.y)
        desc = f"{arch} {c.depth} x {c.width} relu on the first {c.n_digits} digits"
    else:
        raise ValueError(f"arch: must be one of {ARCHS}, got {arch!r}")
    model = make_model(arch, c)
    loss_fn = losses.make_loss_fn(model.apply, "xent")
    return Problem(model, loss_fn, (jnp.asarray(ds.x), jnp.asarray(ds.y)), desc + ", xent")


def matrix_blocks(params, *, matrices_only: bool) -> tuple[list[str], list]:
    """Block names (leaf paths) and their 0/1 masks over ``params``: one block per leaf kept.

    ``matrices_only`` keeps the leaves with ``ndim >= 2`` (weight matrices, conv kernels,
    embeddings), the blocks Zhang et al. compare; otherwise every leaf (biases, LayerNorm gains).
    """
    paths, leaves = hl.leaf_paths(params), jax.tree.leaves(params)
    treedef = jax.tree.structure(params)
    names, masks = [], []
    for i, (p, leaf) in enumerate(zip(paths, leaves, strict=True)):
        if matrices_only and jnp.ndim(leaf) < 2:
            continue
        names.append(p)
        masks.append(
            jax.tree.unflatten(
                treedef, [jnp.full_like(x, 1 if j == i else 0) for j, x in enumerate(leaves)]
            )
        )
    return names, masks


class Spectra(NamedTuple):
    """Per-block Lanczos results of one problem (B blocks)."""

    values: np.ndarray  # (B, k) top eigenvalues, descending
    residuals: np.ndarray  # (B, k) their residual norms
    nodes: np.ndarray  # (B, num_probes * m) SLQ Ritz values
    weights: np.ndarray  # (B, num_probes * m) their weights (sum to 1 per block)
    num_matvecs: int


def masked_spectra(
    loss_fn,
    params,
    batch,
    masks: list,
    key: jax.Array,
    *,
    k: int,
    num_iters: int,
    num_probes: int,
    progress=None,
) -> Spectra:
    """Top-``k`` eigenvalues and SLQ nodes/weights of every diagonal Hessian block (one compile).

    For block ``b`` with mask ``m_b``: the operator ``v -> m_b * H (m_b * v)``, Lanczos (full
    reorthogonalisation) from ``1 + num_probes`` starts inside the block, ``num_iters`` steps
    each: from the fixed ``m_b * cos(i + 1)`` (``i`` the flat index) the top-``k`` Ritz values and
    their residual estimates ``|beta_m s_mi|`` (exact in exact arithmetic; rounding ignored); from
    Gaussian probes the SLQ nodes and weights. The starts share one ``lax.map``, so the HVP is
    compiled once (with :func:`hessian_lab.top_eigs` beside the SLQ scan it was compiled three
    times: the TINY transformer's first block took 34 s against 19 s on the loaded 2-core
    machine). Needs ``num_iters`` <= every block's size (a Krylov space larger than the block
    would leave it). On a breakdown (the block's Krylov space invariant before ``num_iters``
    steps, e.g. a block of rank below it) the tridiagonalisation continues from a fixed vector
    that is not masked, which adds Ritz values 0 from outside the block.
    Cost: ``(1 + num_probes) * num_iters`` Hessian-vector products per block.
    ``progress(done, total)`` hears of each block done.
    """
    op_hvp = hl.hvp(loss_fn, params, batch)

    @jax.jit
    def one(mask, key):
        flat_mask, unravel = tu.ravel(mask)

        def flat_op(x):
            m = unravel(flat_mask * x)
            return flat_mask * tu.to_flat(op_hvp(m))

        def lanczos(v):
            tri = tridiagonalize(flat_op, v, num_iters)
            theta, S = tridiagonal_eigh(tri)  # ascending
            # |H y_i - theta_i y_i| = |beta_m S[m-1, i]| for the Ritz pair i (full reorth.)
            return theta, S[0, :] ** 2, jnp.abs(tri.betas[-1] * S[-1, :])

        cos = jnp.cos(jnp.arange(flat_mask.size, dtype=flat_mask.dtype) + 1.0)
        probes = jax.random.normal(key, (num_probes, flat_mask.size), flat_mask.dtype)
        starts = flat_mask[None] * jnp.concatenate([cos[None], probes])
        theta, weights, resid = jax.lax.map(lanczos, starts)
        top, top_res = theta[0, ::-1][:k], resid[0, ::-1][:k]
        return top, top_res, theta[1:].ravel(), weights[1:].ravel() / num_probes

    outs = []
    for b, m in enumerate(masks):
        outs.append(jax.block_until_ready(one(m, jax.random.fold_in(key, b))))
        if progress is not None:
            progress(b + 1, len(masks))
    values, residuals, nodes, weights = (
        np.stack([np.asarray(o[i]) for o in outs]) for i in range(4)
    )
    count = len(masks) * (1 + num_probes) * num_iters
    return Spectra(values, residuals, nodes, weights, count)


def densities(nodes: np.ndarray, weights: np.ndarray, num_points: int, *, width=0.01, scale=None):
    """``(grid, (B, P) densities)``: Gaussian-broadened SLQ densities on one grid, one width.

    As :func:`hessian_lab.block_spectra` at the defaults: the width is ``width`` (1%) of the
    range of all blocks' nodes and the grid spans it plus 5 widths each side; each density
    integrates to 1. ``scale`` (``(B,)``, e.g. each block's top eigenvalue) divides each block's
    nodes first, so the densities compare spectral shapes rather than scales.
    """
    if scale is not None:
        nodes = nodes / np.asarray(scale, float)[:, None]
    lo, hi = float(nodes.min()), float(nodes.max())
    sigma = width * max(hi - lo, abs(hi) * 1e-6, 1e-12)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    z = (grid[None, :, None] - nodes[:, None, :]) / sigma
    dens = np.sum(weights[:, None, :] * np.exp(-0.5 * z**2), axis=2) / (sigma * np.sqrt(2 * np.pi))
    return grid, dens


def mean_offdiagonal(d: np.ndarray) -> float:
    """The mean of the off-diagonal entries of a square matrix (NaN below 2 x 2)."""
    n = d.shape[0]
    return float(d[~np.eye(n, dtype=bool)].mean()) if n >= 2 else float("nan")
