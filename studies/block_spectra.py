"""Hessian block heterogeneity at initialisation: a transformer against an MLP and a CNN.

Zhang et al. 2024 (arXiv 2402.16788): in a transformer the spectra of the Hessian's diagonal
blocks (one block per parameter tensor) differ strongly from block to block ("block
heterogeneity"), in CNNs and MLPs they look alike; their measure is the mean Jensen-Shannon
distance between the blockwise spectral densities at initialisation (their ``JS^0``), large for
transformers, small for CNNs, and it predicts where SGD trails Adam.

Per architecture (the repo's pre-LayerNorm decoder-only transformer on next-token
cross-entropy over seeded linear-congruential sequences or graph walks; an MLP and a CNN on
digits with cross-entropy), at the initialisation ``seed``, for every block (one per weight
tensor, or per leaf): the top-``k`` eigenvalues of the diagonal block ``H_bb`` (Lanczos), its SLQ
density (``num_probes`` probes of ``num_iters`` steps), all densities of one architecture on one
grid with one Gaussian width (1% of their range, as :func:`hessian_lab.block_spectra`), the
``(B, B)`` Jensen-Shannon distances (:func:`hessian_lab.js_distances`, base 2, in [0, 1]) and
their off-diagonal mean, the *heterogeneity*. Expected: the transformer's clearly above the
controls'. Numerics in :mod:`hessian_lab.studies.block_spectra_core`.

Example:
  >>> from hessian_lab.studies import block_spectra as bs
  >>> r = bs.run(bs.TINY)  # doctest: +SKIP
  >>> dict(zip(r.archs, r.mean_js.round(2)))  # doctest: +SKIP
  {'transformer': 0.3, 'mlp': 0.1}
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np
from matplotlib.figure import Figure

import hessian_lab as hl

from . import block_spectra_core as core
from . import block_spectra_plots as plots
from . import kit
from .kit import knob, need

__all__ = ["DEFAULT", "DOCS", "METRICS", "NAME", "PAPER", "TINY", "Config", "Results"]
__all__ += ["check_inputs", "figures", "load", "run", "save", "summary", "verdict"]

NAME = "block_spectra"
PAPER = "Zhang et al. 2024, arXiv 2402.16788"
DOCS = "docs/studies/block_spectra.md"
CLEARLY = 1.5  # "clearly larger": the transformer's mean JS at least 1.5 x each control's (ours)


@dataclasses.dataclass(frozen=True)
class Config:
    """The architectures, the transformer and its sequences, the digits nets, the Lanczos budgets."""

    archs: tuple[str, ...] = knob(
        ("transformer", "mlp", "cnn"), "architectures: transformer, mlp, cnn (distinct)"
    )
    sequences: Literal["lcg", "walks"] = knob(
        "lcg", "transformer data: linear congruential sequences (lcg) or graph walks (walks)"
    )
    vocab: int = knob(16, "tokens: the LCG modulus, or the graph's nodes")
    context: int = knob(16, "tokens per training sequence")
    n_sequences: int = knob(64, "training sequences")
    d_model: int = knob(32, "transformer width")
    num_layers: int = knob(2, "transformer blocks")
    num_heads: int = knob(4, "attention heads (divides d_model)")
    n_digits: int = knob(512, "first n digits images for the MLP and CNN (<= 1797)")
    depth: int = knob(2, "hidden layers of the MLP, conv layers of the CNN")
    width: int = knob(32, "units per MLP layer, channels per CNN layer")
    matrices_only: bool = knob(
        True, "one block per weight tensor (ndim >= 2); False: also biases and LayerNorm gains"
    )
    k: int = knob(3, "top eigenvalues per block")
    num_iters: int = knob(40, "Lanczos steps per top-eig solve and per SLQ probe")
    num_probes: int = knob(4, "SLQ probes per block")
    num_points: int = knob(512, "points of the common density grid")
    density_width: float = knob(0.01, "Gaussian width of the densities, a fraction of the range")
    normalize: Literal["none", "top"] = knob(
        "none", "none: compare blocks on one scale; top: divide each block's by its top eigenvalue"
    )
    seed: int = knob(0, "initialisation and data seed (SLQ probes: seed + 1)")

    def __post_init__(self):
        kit.check_finite(self)
        ok = isinstance(self.archs, tuple | list) and len(self.archs) >= 1
        ok = (
            ok
            and all(a in core.ARCHS for a in self.archs)
            and len(set(self.archs)) == len(self.archs)
        )
        need(ok, self, "archs", "a non-empty tuple of distinct names from " + ", ".join(core.ARCHS))
        kit.check_choice(self, "sequences", ("lcg", "walks"))
        kit.check_ints(self, "vocab", minimum=3)
        kit.check_ints(self, "context", "n_sequences", "d_model", "num_heads", "n_digits", "width")
        kit.check_ints(self, "num_layers", "depth", maximum=kit.MAX_DEPTH)
        kit.check_ints(self, "k", "num_iters", "num_probes")
        kit.check_ints(self, "num_points", minimum=2)
        kit.check_seeds(self, "seed")
        kit.check_positive(self, "density_width")
        need(self.density_width <= 1, self, "density_width", "<= 1 (a fraction of the range)")
        kit.check_choice(self, "normalize", ("none", "top"))
        need(self.seed < kit.MAX_SEED, self, "seed", f"< {kit.MAX_SEED} (probes use seed + 1)")
        need(self.d_model % self.num_heads == 0, self, "num_heads", "a divisor of d_model")
        need(self.n_digits <= 1797, self, "n_digits", "<= 1797 (the size of digits)")
        need(isinstance(self.matrices_only, bool), self, "matrices_only", "True or False")
        need(self.k <= self.num_iters, self, "k", "<= num_iters")


DEFAULT = Config()
TINY = Config(
    archs=("transformer", "mlp"),
    vocab=8,
    context=8,
    n_sequences=16,
    d_model=8,
    num_layers=1,
    num_heads=2,
    n_digits=128,
    width=16,
    k=2,
    num_iters=12,
    num_probes=2,
    num_points=256,
)


def _block_sizes(config: Config, arch: str) -> tuple[list[str], list[int]]:
    """Block names and sizes of ``arch``, from shapes alone (no data, nothing computed)."""
    model = core.make_model(arch, config)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    names, sizes = [], []
    for path, leaf in zip(hl.leaf_paths(shapes), jax.tree.leaves(shapes), strict=True):
        if not config.matrices_only or len(leaf.shape) >= 2:
            names.append(path)
            sizes.append(math.prod(leaf.shape))
    return names, sizes


def check_inputs(config: Config) -> None:
    """Before any work: ``num_iters`` <= every block's size (the Krylov space stays in the block)."""
    c = config
    for arch in c.archs:
        names, sizes = _block_sizes(c, arch)
        need(len(names) >= 2, c, "archs", f"architectures with >= 2 blocks ({arch} has {names})")
        i = int(np.argmin(sizes))
        kit.check_budget(c, "num_iters", sizes[i], f"the size of the {arch} block {names[i]}")
        kit.check_memory(c, "width", kit.num_params(core.make_model(arch, c)), 8 + c.num_iters)


@dataclasses.dataclass
class Results:
    """Per architecture (A) and per block (B, over all architectures)."""

    config: Any
    archs: np.ndarray  # (A,) architecture names
    descriptions: np.ndarray  # (A,) the problems in words
    initial_loss: np.ndarray  # (A,) the loss at initialisation
    block_arch: np.ndarray  # (B,) the architecture of each block
    block_names: np.ndarray  # (B,) leaf paths
    block_sizes: np.ndarray  # (B,) parameters per block
    values: np.ndarray  # (B, k) top eigenvalues of each diagonal block, descending
    residuals: np.ndarray  # (B, k) their Lanczos residual estimates |beta_m s_mi|
    nodes: np.ndarray  # (B, num_probes * num_iters) SLQ Ritz values
    weights: np.ndarray  # (B, num_probes * num_iters) their weights
    grids: np.ndarray  # (A, P) each architecture's common grid
    densities: np.ndarray  # (B, P) each block's density on its architecture's grid
    js: np.ndarray  # (B, B) Jensen-Shannon distances (NaN between architectures)
    mean_js: np.ndarray  # (A,) off-diagonal mean of each architecture's JS matrix
    num_matvecs: np.ndarray  # (A,) Hessian-vector products used
    elapsed: np.ndarray  # () seconds


def run(config: Config, *, progress: Callable[[int, int], None] | None = None) -> Results:
    """Every architecture's per-block spectra and JS distances (no I/O); progress counts blocks."""
    check_inputs(config)
    c, t0 = config, time.perf_counter()
    counter = kit.StepCounter(sum(len(_block_sizes(c, a)[0]) for a in c.archs), progress)
    key = jax.random.key(c.seed + 1)
    rows: dict[str, list] = {f: [] for f in ("arch", "name", "size", "dens", "js")}
    per_arch: dict[str, list] = {f: [] for f in ("desc", "loss", "grid", "mean", "hvps", "spec")}
    for a, arch in enumerate(c.archs):
        prob = core.make_problem(arch, c)
        params = prob.model.init(jax.random.key(c.seed))
        names, masks = core.matrix_blocks(params, matrices_only=c.matrices_only)
        spec = core.masked_spectra(
            prob.loss_fn,
            params,
            prob.data,
            masks,
            jax.random.fold_in(key, a),
            k=c.k,
            num_iters=c.num_iters,
            num_probes=c.num_probes,
            progress=counter.part(len(masks)),
        )
        scale = spec.values[:, 0] if c.normalize == "top" else None
        need(
            scale is None or bool(np.all(scale > 0)),
            c,
            "normalize",
            f"'none' when a {arch} block's top eigenvalue is <= 0",
        )
        grid, dens = core.densities(
            spec.nodes, spec.weights, c.num_points, width=c.density_width, scale=scale
        )
        d = hl.js_distances(dens)
        rows["arch"] += [arch] * len(names)
        rows["name"] += names
        rows["size"] += [int(np.sum(hl.tree.to_flat(m))) for m in masks]
        rows["dens"].append(dens)
        rows["js"].append(d)
        per_arch["desc"].append(prob.description)
        per_arch["loss"].append(float(prob.loss_fn(params, prob.data)))
        per_arch["grid"].append(grid)
        per_arch["mean"].append(core.mean_offdiagonal(d))
        per_arch["hvps"].append(spec.num_matvecs)
        per_arch["spec"].append(spec)
    counter.finish()
    specs = per_arch["spec"]
    cat = lambda f: np.concatenate([getattr(s, f) for s in specs])  # noqa: E731
    return Results(
        config=c,
        archs=np.asarray(c.archs, str),
        descriptions=np.asarray(per_arch["desc"], str),
        initial_loss=np.asarray(per_arch["loss"], float),
        block_arch=np.asarray(rows["arch"], str),
        block_names=np.asarray(rows["name"], str),
        block_sizes=np.asarray(rows["size"], np.int64),
        values=cat("values").astype(float),
        residuals=cat("residuals").astype(float),
        nodes=cat("nodes").astype(float),
        weights=cat("weights").astype(float),
        grids=np.stack(per_arch["grid"]).astype(float),
        densities=np.concatenate(rows["dens"]).astype(float),
        js=_block_diagonal(rows["js"]),
        mean_js=np.asarray(per_arch["mean"], float),
        num_matvecs=np.asarray(per_arch["hvps"], np.int64),
        elapsed=np.asarray(time.perf_counter() - t0),
    )


def _block_diagonal(mats: list[np.ndarray]) -> np.ndarray:
    n = sum(m.shape[0] for m in mats)
    out, i = np.full((n, n), np.nan), 0
    for m in mats:
        out[i : i + m.shape[0], i : i + m.shape[0]] = m
        i += m.shape[0]
    return out


def figures(results: Results) -> dict[str, Figure]:
    """Per-block densities, top eigenvalues, the JS heatmaps and the mean-JS comparison."""
    return plots.draw(results, NAME)


METRICS = {
    "mean_js": kit.Metric("mean Jensen-Shannon distance between block densities (base 2)"),
    "num_blocks": kit.Metric("diagonal blocks compared", "blocks"),
    "top_eig": kit.Metric("top eigenvalue of each diagonal Hessian block"),
    "top_eig_range": kit.Metric("largest over smallest block top eigenvalue", "ratio"),
    "max_residual": kit.Metric("largest residual norm of a block top eigenvalue"),
    "initial_loss": kit.Metric("cross-entropy at initialisation (log vocab or log 10 expected)"),
    "hvps": kit.Metric("Hessian-vector products", "products"),
    "js_ratio": kit.Metric("transformer mean JS over the largest control's (> 1.5: clearly)"),
    "elapsed_s": kit.Metric("wall-clock time of the study", "s"),
}


def _arch_rows(r: Results, arch: str) -> np.ndarray:
    return np.flatnonzero(r.block_arch == arch)


def _js_ratio(r: Results) -> float:
    archs = list(r.archs)
    controls = [r.mean_js[i] for i, a in enumerate(archs) if a != "transformer"]
    if "transformer" not in archs or not controls:
        return float("nan")
    return float(r.mean_js[archs.index("transformer")] / max(controls))


def summary(results: Results) -> dict[str, Any]:
    """Per architecture: the mean JS distance, the block count, the top-eigenvalue range."""
    r = results
    per = lambda f: {str(a): f(i, str(a)) for i, a in enumerate(r.archs)}  # noqa: E731
    top = r.values[:, 0]
    return {
        "mean_js": per(lambda i, a: float(r.mean_js[i])),
        "num_blocks": per(lambda i, a: int(_arch_rows(r, a).size)),
        "top_eig": {
            f"{a} {plots.short_name(n)}": float(v)
            for a, n, v in zip(r.block_arch, r.block_names, top, strict=True)
        },
        "top_eig_range": per(
            lambda i, a: float(top[_arch_rows(r, a)].max() / top[_arch_rows(r, a)].min())
        ),
        "max_residual": per(lambda i, a: float(r.residuals[_arch_rows(r, a)].max())),
        "initial_loss": per(lambda i, a: float(r.initial_loss[i])),
        "hvps": per(lambda i, a: int(r.num_matvecs[i])),
        "js_ratio": _js_ratio(r),
        "elapsed_s": float(r.elapsed),
    }


def verdict(results: Results) -> list[str]:
    """The transformer's heterogeneity against each control's, then each architecture's blocks."""
    r, out = results, []
    archs = list(r.archs)
    js = {a: r.mean_js[i] for i, a in enumerate(archs)}
    if "transformer" in js and len(js) > 1:
        ratio = _js_ratio(r)
        controls = ", ".join(f"{a} {kit.fmt(v)}" for a, v in js.items() if a != "transformer")
        out.append(
            kit.compare(
                "transformer's mean JS distance between block densities over the largest control's",
                ratio,
                "Zhang et al.",
                f"transformers clearly above CNNs/MLPs; ours: >= {CLEARLY}",
                ok=ratio >= CLEARLY,
            )
            + f" (transformer {kit.fmt(js['transformer'])}, {controls})."
        )
    else:
        out.append(
            "mean JS distance between block densities: "
            + ", ".join(f"{a} {kit.fmt(v)}" for a, v in js.items())
            + " (no transformer and control to compare)."
        )
    for a in archs:
        rows = _arch_rows(r, a)
        top = r.values[rows, 0]
        hi, lo = rows[int(np.argmax(top))], rows[int(np.argmin(top))]
        out.append(
            f"{a}: {rows.size} blocks; top eigenvalues from {kit.fmt(top.min())} "
            f"({plots.short_name(r.block_names[lo])}) to {kit.fmt(top.max())} "
            f"({plots.short_name(r.block_names[hi])}), a factor {kit.fmt(top.max() / top.min())}."
        )
    return out


save, load = kit.persistence(NAME, Results, Config, summary)
