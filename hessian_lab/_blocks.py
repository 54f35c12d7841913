"""Where the gradient lies, and how curvature differs between blocks of parameters.

- :func:`alignment`: the fraction ``|P_k g|^2 / |g|^2`` of a vector (the gradient, or the
  update) in the span of the top-``k`` eigenvectors of a symmetric operator. Gur-Ari, Roberts &
  Dyer (arXiv 1812.04754) find that after a short transient the gradient lies mostly in the top-k
  Hessian eigenspace, ``k`` about the number of classes.
- :func:`block_operator`: the diagonal block ``P A P^T`` of an operator for a group of parameter
  leaves (the others held at zero), an operator on the list of the group's leaves.
- :func:`block_spectra`: per-block top eigenvalues and SLQ densities on one common grid, and
  :func:`js_distances`: the Jensen-Shannon distances between them. Their mean over pairs of blocks
  is the *block heterogeneity* of Zhang et al. (arXiv 2402.16788), large for transformers and
  small for MLPs and CNNs at initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import tree as tu
from ._lanczos import top_eigs
from ._matvec import check_int
from ._operators import Operator, shape_struct
from ._slq import spectral_density
from .callback_protocol import Callback, check_every, full_data_hessian, random_unit

__all__ = [
    "AlignmentResult",
    "BlockSpectra",
    "alignment",
    "alignment_callback",
    "block_operator",
    "block_spectra",
    "js_distances",
    "leaf_paths",
]

PyTree = Any


class AlignmentResult(NamedTuple):
    """The share of a vector in the top-``k`` eigenspace.

    Attributes:
      fraction: ``|P_k g|^2 / |g|^2`` in ``[0, 1]``, ``P_k`` the projector onto the ``k`` Ritz
        vectors (NaN for ``g = 0`` under ``jit``).
      values: ``(k,)`` the top eigenvalues whose eigenvectors span the space, descending.
      vectors: their eigenvectors, as in :class:`hessian_lab.EigResult` (leading axis ``k``).
      residuals: ``(k,)`` their residual norms (as in :class:`hessian_lab.EigResult`): the
        fraction is as good as these are small.
      num_matvecs: operator products used.
      finite: every product was finite.
    """

    fraction: jax.Array
    values: jax.Array
    vectors: PyTree
    residuals: jax.Array
    num_matvecs: jax.Array
    finite: jax.Array


def alignment(matvec, g: PyTree, v0: PyTree, /, *, k: int = 10, num_iters: int = 40):
    """Return the fraction of ``g`` in the top-``k`` eigenspace of ``matvec`` (Lanczos).

    Args:
      matvec: a symmetric operator on pytrees shaped like ``g`` (e.g. a Hessian), or a dense
        ``(D, D)`` array.
      g: the vector to project (the gradient, or the optimizer's update).
      v0: Lanczos start vector. Not ``g`` itself: a Krylov space grown from ``g`` favours it,
        so unconverged Ritz vectors would overstate the fraction.
      k: dimension of the eigenspace, ``1 <= k <= num_iters``.
      num_iters: Lanczos steps (``k <= num_iters <= D``); the top-``k`` space needs a few more
        steps than ``k`` to converge: check ``residuals``.

    Raises:
      ValueError: ``g`` is zero or not finite (checked when concrete), ``g`` and ``v0`` differ in
        structure, or a budget out of range (as in :func:`hessian_lab.top_eigs`).

    Example:
      >>> import jax.numpy as jnp
      >>> A = jnp.diag(jnp.array([3.0, 2.0, 1.0]))
      >>> r = alignment(A, jnp.array([1.0, 0.0, 1.0]), jnp.ones(3), k=1, num_iters=3)
      >>> round(float(r.fraction), 6)
      0.5
    """
    tu.check_same_structure(v0, g, ("v0", "g"))
    tu.check_finite(g, "g")
    if tu.is_concrete(g) and float(tu.norm(g)) == 0.0:
        raise ValueError("g: must be a non-zero vector (its direction is undefined)")
    res = top_eigs(matvec, v0, k=k, num_iters=num_iters)
    gg = tu.vdot(g, g)
    flat_g = tu.to_flat(g)
    overlaps = jax.vmap(
        lambda i: jnp.vdot(tu.to_flat(jax.tree.map(lambda x: x[i], res.vectors)), flat_g)
    )(jnp.arange(k))
    fraction = jnp.sum(overlaps**2) / jnp.where(gg > 0, gg, jnp.nan)
    return AlignmentResult(
        jnp.clip(fraction, 0.0, 1.0),
        res.values,
        res.vectors,
        res.residuals,
        res.num_matvecs,
        res.finite,
    )


def alignment_callback(
    loss_fn,
    data=None,
    *,
    every: int = 10,
    k: int = 10,
    num_iters: int = 40,
    chunk_size=None,
    key=None,
) -> Callback:
    """Record ``alignment``: the share of the step's gradient in the top-``k`` Hessian eigenspace.

    The Hessian is that of the mean loss over ``data`` (or the run's training set), as in
    :func:`hessian_lab.callbacks.sharpness`; the gradient is the step's own (``StepInfo.grads``,
    a minibatch gradient under SGD). Warm-started from the previous top eigenvector. Cost:
    ``num_iters`` full-data Hessian-vector products per measurement. Metrics: ``alignment``
    (the fraction), ``alignment_sharpness`` (the top eigenvalue) and ``alignment_residual``
    (the largest residual among the ``k`` pairs).
    """
    every = check_every(every)
    check_int(k, "k", 1)
    check_int(num_iters, "num_iters", k)
    key = jax.random.key(0) if key is None else key

    def init(params):
        return random_unit(key, params)

    make = full_data_hessian(loss_fn, data, chunk_size)

    def update(v0, info):
        r = alignment(make(info), info.grads, v0, k=k, num_iters=num_iters)
        f = jnp.result_type(float)
        metrics = {
            "alignment": jnp.asarray(r.fraction, f),
            "alignment_sharpness": jnp.asarray(r.values[0], f),
            "alignment_residual": jnp.asarray(jnp.max(r.residuals), f),
        }
        return jax.tree.map(lambda x: x[0], r.vectors), metrics

    return Callback(init, update, every)


def leaf_paths(params: PyTree) -> list[str]:
    """The path of every leaf of ``params`` as :func:`jax.tree_util.keystr` writes it, in order.

    Example:
      >>> import jax.numpy as jnp
      >>> leaf_paths({"b": jnp.zeros(2), "w": jnp.zeros((2, 2))})
      ["['b']", "['w']"]
    """
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def block_operator(matvec, params: PyTree, paths: Sequence[str], *, name: str = "block"):
    """The diagonal block of ``matvec`` on the leaves of ``params`` at ``paths``.

    The block operator acts on a list of arrays shaped like those leaves, in tree order: it embeds
    them with zeros elsewhere, applies ``matvec`` and keeps the same leaves of the result.

    Returns:
      ``(operator, block)``: the :class:`hessian_lab.Operator` and the list of the block's leaves
      of ``params`` (a template for start vectors).

    Raises:
      ValueError: a path is not a leaf of ``params`` (the error lists them), or ``paths`` is empty.
    """
    all_paths = leaf_paths(params)
    wanted = list(paths) if not isinstance(paths, str) else [paths]
    unknown = [p for p in wanted if p not in all_paths]
    if unknown or not wanted:
        raise ValueError(
            f"paths: must be a non-empty subset of the leaf paths {all_paths}, got {wanted}"
        )
    leaves, treedef = jax.tree.flatten(params)
    index = [i for i, p in enumerate(all_paths) if p in wanted]
    block = [leaves[i] for i in index]

    def mv(vb: list) -> list:
        full = [jnp.zeros_like(x) for x in leaves]
        for j, i in enumerate(index):
            full[i] = vb[j]
        out = jax.tree.leaves(matvec(jax.tree.unflatten(treedef, full)))
        return [out[i] for i in index]

    return Operator(mv, shape_struct(block), name), block


class BlockSpectra(NamedTuple):
    """Per-block curvature.

    Attributes:
      names: the block names, in order.
      values: ``(B, k)`` top eigenvalues per block, descending.
      residuals: ``(B, k)`` their residual norms.
      grid: ``(P,)`` the common grid of the densities.
      densities: ``(B, P)`` SLQ densities on ``grid``, one common Gaussian width; each
        integrates to 1.
      num_matvecs: total operator products.
    """

    names: tuple[str, ...]
    values: np.ndarray
    residuals: np.ndarray
    grid: np.ndarray
    densities: np.ndarray
    num_matvecs: int


def _groups(params: PyTree, blocks) -> dict[str, list[str]]:
    if blocks is None:
        return {p: [p] for p in leaf_paths(params)}
    if not isinstance(blocks, Mapping) or not blocks:
        raise ValueError(
            f"blocks: must be None (one block per leaf) or a non-empty dict name -> leaf paths, got "
            f"{type(blocks).__name__}"
        )
    return {
        str(name): [paths] if isinstance(paths, str) else list(paths)
        for name, paths in blocks.items()
    }


def block_spectra(
    matvec,
    params: PyTree,
    key: jax.Array,
    *,
    blocks: Mapping[str, Sequence[str]] | None = None,
    k: int = 1,
    num_iters: int = 20,
    num_probes: int = 2,
    num_points: int = 256,
) -> BlockSpectra:
    """Top eigenvalues and SLQ densities of each diagonal block of ``matvec`` (eagerly).

    Args:
      matvec: a symmetric operator on pytrees shaped like ``params`` (e.g. a Hessian).
      params: the parameters (their leaves define the blocks).
      key: PRNG key for the SLQ probes.
      blocks: ``None``: one block per parameter tensor (leaf), named by its path; or a dict
        ``name -> leaf paths`` (:func:`leaf_paths` lists them).
      k: top eigenvalues per block; num_iters: Lanczos steps per eigen-solve and per SLQ probe,
        clamped to each block's size; num_probes: SLQ probes per block; num_points: grid size.

    Returns:
      :class:`BlockSpectra`; the densities share one grid and one width (1% of the range of all
      blocks' Ritz values), so :func:`js_distances` compares them directly.

    Raises:
      ValueError: bad ``blocks`` or leaf paths, or budgets out of range.
    """
    groups = _groups(params, blocks)
    check_int(k, "k", 1)
    check_int(num_iters, "num_iters", 1)
    check_int(num_points, "num_points", 2)
    values, residuals, node_sets, weight_sets, count = [], [], [], [], 0
    for b, (name, paths) in enumerate(groups.items()):
        op, block = block_operator(matvec, params, paths, name=name)
        dim = sum(int(np.prod(jnp.shape(x))) for x in block)
        if k > dim:
            raise ValueError(f"k: must be at most the size {dim} of block {name!r}, got {k}")
        m = min(num_iters, dim)
        v0 = [jnp.cos(jnp.arange(x.size, dtype=x.dtype) + 1.0).reshape(x.shape) for x in block]
        r = top_eigs(op, v0, k=k, num_iters=max(m, k))
        d = spectral_density(
            op, jax.random.fold_in(key, b), block, num_iters=m, num_probes=num_probes
        )
        values.append(np.asarray(r.values))
        residuals.append(np.asarray(r.residuals))
        node_sets.append(np.asarray(d.nodes).ravel())
        weight_sets.append(np.asarray(d.weights).ravel() / num_probes)
        count += int(r.num_matvecs) + int(d.num_matvecs)
    lo = min(float(n.min()) for n in node_sets)
    hi = max(float(n.max()) for n in node_sets)
    sigma = 0.01 * max(hi - lo, abs(hi) * 1e-6, 1e-12)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points)
    densities = np.stack(
        [
            np.sum(w * np.exp(-0.5 * ((grid[:, None] - n) / sigma) ** 2), axis=1)
            / (sigma * np.sqrt(2 * np.pi))
            for n, w in zip(node_sets, weight_sets, strict=True)
        ]
    )
    return BlockSpectra(
        tuple(groups), np.stack(values), np.stack(residuals), grid, densities, count
    )


def js_distances(densities: np.ndarray) -> np.ndarray:
    """The ``(B, B)`` Jensen-Shannon distances (base 2, in ``[0, 1]``) between rows of densities.

    Each row is a density on one common grid; it is normalised to sum to 1 first. The mean of the
    off-diagonal entries is the block heterogeneity of Zhang et al. (arXiv 2402.16788).

    Example:
      >>> import numpy as np
      >>> js_distances(np.array([[1.0, 0.0], [0.0, 1.0]])).tolist()
      [[0.0, 1.0], [1.0, 0.0]]
    """
    p = np.asarray(densities, float)
    if p.ndim != 2 or p.shape[0] < 1 or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("densities: must be a finite, non-negative (B, P) array")
    sums = p.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("densities: every row must have positive mass")
    p = p / sums
    out = np.zeros((p.shape[0], p.shape[0]))
    for i in range(p.shape[0]):
        for j in range(i + 1, p.shape[0]):
            m = 0.5 * (p[i] + p[j])
            js = 0.5 * _kl2(p[i], m) + 0.5 * _kl2(p[j], m)
            out[i, j] = out[j, i] = np.sqrt(max(js, 0.0))
    return out


def _kl2(a: np.ndarray, m: np.ndarray) -> float:
    """KL(a || m) in bits, with 0 log 0 = 0, for ``m = (a + b) / 2`` (so ``a / m <= 2``).

    A subnormal ``a`` (a Gaussian tail far from its nodes) can make ``m = (a + b) / 2`` round to
    zero; the ratio is then its bound 2, not a division by zero.
    """
    a, m = a[a > 0], m[a > 0]
    ratio = np.divide(a, m, out=np.full_like(a, 2.0), where=m > 0)
    return float(np.sum(a * np.log2(np.minimum(ratio, 2.0))))
