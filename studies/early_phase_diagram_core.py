"""Conventions and measurements of the early phase diagram (Kalra & Barkeshli 2023, arXiv 2302.12250).

* **Depth.** The paper's ``d`` counts every layer with weights, the readout included: its
  ``d = 8`` is 7 hidden layers and the readout. ``models.mlp`` counts hidden layers and
  ``models.cnn`` conv layers (a dense readout follows both), so the builders get ``d - 1``.
  :func:`hidden_layers` and :func:`paper_depth` translate either convention.
* **The paper's c_sharp measurement.** Kalra & Barkeshli compare ``lambda_t``, the top Hessian
  eigenvalue of the loss on a 512-example training batch, against ``lambda_0`` on 4096 examples.
  :func:`batch_sharpness` measures ``lambda_t`` on a fresh random batch of ``B`` training
  examples at every measured step; :class:`BatchSharpnessRunner` trains with it in place of the
  full-batch sharpness (``lambda_0`` stays on the whole training set, the larger set).
* **Their numbers.** :data:`PAPER_D8`: the critical values of the authors' own demo run at
  ``d = 8`` (CIFAR-10, one initialisation), for the docs table and the verdict.
* **Old runs.** :func:`stored_config` reads a ``config.json`` written before ``depth_convention``
  existed with the meaning it was saved under (hidden layers).
* **Problems.** :func:`builtin_problem` builds the MLP or CNN of a cell on digits (8x8 images)
  or another data spec (MNIST 28x28x1, CIFAR-10, npz); :func:`user_cell` calls the user's
  function with the cell's values of the swept arguments (``x_arg``, ``y_arg``);
  :func:`check_axes` checks those fields and :func:`cell_labels` names the cells.

Example:
  >>> hidden_layers(8, "layers"), hidden_layers(7, "hidden"), paper_depth(7, "hidden")
  (7, 7, 8)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_lab import data as hd
from hessian_lab import hvp, losses, models, optim, population, top_eigs
from hessian_lab import problem as hp
from hessian_lab.callback_protocol import Callback, random_unit

from . import kit, problems, stats
from . import problems_user as pu

__all__ = ["DEPTH_CONVENTIONS", "PAPER_D8", "BatchSharpnessRunner", "batch_sharpness"]
__all__ += [
    "STORED_DEFAULTS",
    "against_paper",
    "builtin_problem",
    "cell_labels",
    "check_axes",
    "check_inputs",
    "critical",
    "hidden_layers",
    "paper_depth",
    "plot_axes",
    "stored_config",
    "trend",
    "user_cell",
    "user_verdict",
]

DEPTH_CONVENTIONS = ("layers", "hidden")

# Kalra & Barkeshli's d = 8 ReLU FCN (no biases, He init, SP), CIFAR-10, MSE, SGD with B = 512
# for T = 10 steps, c = 2^(0.1 k), one initialisation: the authors' public demo notebook for the
# paper. c_loss, c_sharp and c_max follow from the runs it prints (lambda_t on 512-example
# batches, lambda_0 on 4096 examples, rule "> 1"); c_barrier is read off its phase-diagram figure
# (+-0.1 in log2 c; at w = 256 no converging run had a barrier and the notebook sets c_barrier =
# c_max).
PAPER_D8: dict[int, dict[str, float]] = {
    256: {"c_loss": 3.25, "c_sharp": 4.92, "c_barrier": 13.93, "c_max": 13.93},
    512: {"c_loss": 3.03, "c_sharp": 4.29, "c_barrier": 6.3, "c_max": 13.0},
    1024: {"c_loss": 2.64, "c_sharp": 4.00, "c_barrier": 6.1, "c_max": 13.93},
    2048: {"c_loss": 2.46, "c_sharp": 3.25, "c_barrier": 5.7, "c_max": 12.13},
}


def hidden_layers(depth: int, convention: str) -> int:
    """Return the builders' depth (hidden MLP layers, or conv layers) of a depth in ``convention``.

    ``"layers"``: ``depth`` counts every layer with weights, the readout included (the paper's
    ``d``), so ``depth - 1``; ``"hidden"``: ``depth`` itself.
    """
    if convention not in DEPTH_CONVENTIONS:
        raise ValueError(f"depth_convention: must be 'layers' or 'hidden', got {convention!r}")
    return int(depth) - 1 if convention == "layers" else int(depth)


def paper_depth(depth: int, convention: str) -> int:
    """Return the paper's ``d`` (layers with weights, readout included) of a depth in ``convention``."""
    return hidden_layers(depth, convention) + 1


def batch_sharpness(
    loss_fn, batch_size: int, *, every: int = 1, num_iters: int = 10, seed: int = 0
) -> Callback:
    """Record ``sharpness``: the top Hessian eigenvalue of the loss on a random training batch.

    At step t the batch is ``batch_size`` examples of the run's training set (``StepInfo.data``)
    drawn without replacement by ``permutation(fold_in(key(seed), t))``: a fresh batch at every
    measurement, the same sequence for every member of a population (as the paper reuses one
    batch sequence for every ``c``). Lanczos, warm-started from the previous top eigenvector.
    Cost: ``num_iters`` Hessian-vector products on ``batch_size`` examples per measurement.

    This is Kalra & Barkeshli's ``lambda_t`` (on 512-example batches; arXiv 2302.12250). By the
    convexity of ``lambda_max`` it is biased upward against the full-data sharpness, the more so
    the smaller the batch, so compared with a ``lambda_0`` on more data it crosses 1 earlier.
    """
    key = jax.random.key(seed)

    def init(params):
        return random_unit(jax.random.key(0), params)

    def update(v0, info):
        n = jax.tree.leaves(info.data)[0].shape[0]
        idx = jax.random.permutation(jax.random.fold_in(key, info.step), n)[:batch_size]
        batch = jax.tree.map(lambda a: jnp.take(a, idx, axis=0), info.data)
        res = top_eigs(hvp(loss_fn, info.params, batch), v0, k=1, num_iters=num_iters)
        return jax.tree.map(lambda x: x[0], res.vectors), {"sharpness": res.values[0]}

    return Callback(init, update, every)


class BatchSharpnessRunner(problems.CatapultRunner):
    """A :class:`~hessian_lab.studies.problems.CatapultRunner` whose ``lambda_t`` is on batches.

    Same training (full-batch GD at ``eta = c / lambda_0``), ``lambda_0`` (the whole training
    set) and line barrier; the recorded ``sharpness`` is :func:`batch_sharpness` on
    ``sharpness_batch`` examples. Only the population step differs, so it is rebuilt here with
    the other callback (nothing compiles before the first ``train``).
    """

    def __init__(self, problem: problems.Problem, *, sharpness_batch: int, **kwargs: Any):
        super().__init__(problem, **kwargs)
        loss_fn, steps = problem.loss_fn, self.num_steps
        cbs = [
            batch_sharpness(
                loss_fn,
                sharpness_batch,
                every=kwargs.get("sharpness_every", 1),
                num_iters=kwargs.get("lanczos_iters", 10),
            )
        ]
        if self.barrier:
            cbs.append(problems.line_barrier(loss_fn, kwargs["barrier_points"], steps))
        gd = optim.make_optimizer("gd", learning_rate=1.0)
        self.step = population.make_step(
            loss_fn, gd, mode=kwargs.get("mode", "auto"), callbacks=cbs, chunk_size=steps + 1
        )


# a config.json saved before depth_convention existed counted hidden layers: it still does (when
# the study loads it, and when a sweep resumes or merges it through configs.config_from_dict)
STORED_DEFAULTS = {"depth_convention": "hidden"}


def stored_config(config_cls: type, defaults: dict[str, Any]) -> Callable[..., Any]:
    """Build ``config_cls(**fields)`` from a saved config.json, keeping old runs' meaning.

    A field missing from the file was saved before it existed and takes its value in
    ``defaults`` (e.g. ``depth_convention = "hidden"``: ``depths`` counted hidden layers then).
    """

    def build(**fields: Any) -> Any:
        return config_cls(**{**defaults, **fields})

    return build


def critical(r) -> dict[str, np.ndarray]:
    """Compute the study's ``critical``: flags (D, W, C, S) and per-seed critical values (D, W, S).

    A diverged member counts as a loss catapult, a sharpness catapult and a barrier (its loss and
    sharpness blew up, and so does the loss at the end of its segment).
    """
    div = r.diverged
    loss_ratio = stats.max_ratio(r.loss, r.loss[..., 0])
    sharp_ratio = stats.max_ratio(r.sharpness, r.lambda0[:, :, None, :])
    out = {
        "loss_catapult": (loss_ratio > 1) | div,
        "sharp_catapult": (sharp_ratio > r.config.sharp_threshold) | div,
        "barrier": (r.line_ratio > 1) | div,
        "loss_ratio": loss_ratio,
        "sharp_ratio": sharp_ratio,
        "final_ratio": r.sharpness[..., -1] / r.lambda0[:, :, None, :],
    }
    flags = {"c_loss": "loss_catapult", "c_sharp": "sharp_catapult", "c_barrier": "barrier"}
    for name, flag in flags.items():
        out[name] = stats.critical_c(r.c, out[flag])
    out["c_max"] = stats.critical_c(r.c, div, largest_before=True)
    return out


def against_paper(summary: dict, cells, log2_step: float) -> list[str]:
    """Compare the cells at the paper's ``d = 8`` and one of its widths with its numbers.

    ``cells``: ``(label, d, w)`` with the paper's ``d``. ``c_loss`` and ``c_max`` are reproduced
    when within one step of our log2 grid of theirs (``c_max`` is a grid value on both sides).
    """
    out = []
    for lab, d, w in cells:
        ref = PAPER_D8.get(int(w)) if int(d) == 8 else None
        if ref is None:
            continue
        for name in ("c_loss", "c_max"):
            ours = summary[name][lab]
            ok = bool(np.isfinite(ours) and abs(np.log2(ours / ref[name])) <= log2_step + 1e-9)
            out.append(kit.compare(f"{name} at {lab}", ours, "Kalra & Barkeshli's run",
                                   f"{ref[name]:.3g}, within one grid step", ok=ok))  # fmt: skip
    return out


def builtin_problem(config: Any, hidden: int, width: int) -> problems.Problem:
    """The built-in MLP or CNN with ``hidden`` hidden (conv) layers of ``width``, on ``config.data``.

    On digits it is :func:`problems.catapult_problem` (8x8x1 images). Another data spec (MNIST,
    CIFAR-10, npz) gives its first ``n`` examples standardised per feature, one-hot targets, the
    images kept NHWC for the CNN (a channel axis added to greyscale ``(H, W)`` images); MSE with
    ``config.normalization`` as on digits.
    """
    c = config
    kw = dict(width=width, depth=hidden, param=c.param, activation=c.activation)
    if hd.parse_data(c.data).kind == "digits":
        return problems.catapult_problem(c.arch, n=c.n, normalization=c.normalization, **kw)
    ds = pu.builtin_data(c.data, c.n, standardize="feature")
    shape = hd.load_data(c.data, n=c.n).x.shape[1:]
    shape = (*shape, 1) if len(shape) == 2 else shape
    dtype = jnp.result_type(float)
    x = jnp.asarray(ds.x.reshape(len(ds.x), *shape) if c.arch == "cnn" else ds.x, dtype)
    k = ds.y.shape[1]
    net = models.mlp(x.shape[1], k, **kw) if c.arch == "mlp" else models.cnn(shape, k, **kw)
    loss_fn = losses.make_loss_fn(net.apply, "mse", normalization=c.normalization)
    desc = f"{c.data} (first {len(x)}), {c.arch} {hidden}x{width} {c.activation} ({c.param})"
    return problems.Problem(net, loss_fn, (x, jnp.asarray(ds.y, dtype)), desc)


def _value_text(v: Any) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def user_cell(config: Any, x: Any, y: Any = None) -> problems.Problem:
    """The user's problem at ``x_arg = x`` (and ``y_arg = y``), on the first ``n`` examples.

    The function gets ``problem_args`` and the cell's values (an integral value as an int, so
    ``width=16`` is 16), and the first seed where it declares ``seed``.
    """
    c = config
    args = (*c.problem_args, f"{c.x_arg}={_value_text(x)}")
    args += (f"{c.y_arg}={_value_text(y)}",) if c.y_arg else ()
    return pu.user_problem(c.problem, data=c.data, args=args, seed=c.seeds[0], n=c.n,
                           study="early_phase_diagram")  # fmt: skip


def check_axes(config: Any) -> None:
    """``x_arg``, ``x_values``, ``y_arg``, ``y_values``: set with ``problem``, empty without it.

    With ``problem`` the x axis is an argument name and a tuple of distinct numbers (non-empty:
    :func:`check_inputs`, as the command line sets the name before the values);
    the y axis is empty or likewise, another argument; neither is also in ``problem_args``.
    """
    c = config
    for f in ("x_values", "y_values"):
        ok = isinstance(getattr(c, f), tuple | list)
        ok = ok and all(kit.is_int(v) or isinstance(v, float) for v in getattr(c, f))
        kit.need(ok, c, f, "a tuple of numbers")
    if not c.problem:
        for f in ("x_values", "y_arg", "y_values"):
            kit.need(not getattr(c, f), c, f, "empty unless problem is set")
        kit.need(c.x_arg == "width", c, "x_arg", "'width' (the default) unless problem is set")
        return
    given = hp.parse_args(c.problem_args)
    kit.need(isinstance(c.x_arg, str) and c.x_arg.isidentifier(), c, "x_arg",
             "the name of an argument of your function (--x NAME=V1,V2,...)")  # fmt: skip
    kit.need(not c.x_values or c.x_arg not in given, c, "x_arg",
             "an argument not also given in problem_args")  # fmt: skip
    # empty is checked in check_inputs: the command line sets problem before the axis
    ok = len(set(c.x_values)) == len(c.x_values)
    kit.need(ok, c, "x_values", "a tuple of distinct numbers (--x NAME=V1,V2,...)")
    if not c.y_arg:
        kit.need(not c.y_values, c, "y_values", "empty when y_arg is empty")
        return
    ok = isinstance(c.y_arg, str) and c.y_arg.isidentifier() and c.y_arg != c.x_arg
    kit.need(ok, c, "y_arg",
             "empty, or an argument of your function other than x_arg")  # fmt: skip
    kit.need(not c.y_values or c.y_arg not in given, c, "y_arg",
             "an argument not also given in problem_args")  # fmt: skip
    ok = len(set(c.y_values)) == len(c.y_values)
    kit.need(ok, c, "y_values", "a tuple of distinct numbers (--y NAME=V1,V2,...)")


def cell_labels(r: Any, paper_depths: np.ndarray) -> list[tuple[int, int, str]]:
    """``(i, j, label)`` per cell: ``"d=8 w=256"`` (the paper's d), or ``"width=16 depth=2"``."""
    c, out = r.config, []
    for i, d in enumerate(paper_depths):
        for j, w in enumerate(r.widths):
            if not c.problem:
                out.append((i, j, f"d={int(d)} w={int(w)}"))
                continue
            lab = f"{c.x_arg}={_value_text(w)}"
            out.append((i, j, lab + (f" {c.y_arg}={_value_text(d)}" if c.y_arg else "")))
    return out


def user_verdict(summary: dict, cells: list, r: Any = None, depths: Any = None) -> list[str]:
    """Numbers without judgement along the user's x axis (per row), and the ordering, judged."""
    paper, out, rows = "Kalra & Barkeshli", [], {}
    for i, _, lab in cells:
        rows.setdefault(i, []).append(lab)
    cl = summary["c_loss"]
    for labs in rows.values():
        text = " -> ".join(f"{kit.fmt(cl[lab])}" for lab in labs)
        out.append(kit.compare(f"c_loss over {labs[0]} ... {labs[-1]}", text, paper,
                               "rises with d/w (falls toward 2 as width grows)", ok=None))  # fmt: skip
    return out


def plot_axes(r: Any, paper_depths: np.ndarray) -> dict[str, Any]:
    """What the figures draw against: ``y`` (D, W) vertical values, ``ylabel``, ``short`` (its
    short name), ``rows`` (one
    label per row of cells, one set of curves each) and ``name`` (the network).

    Built-in nets: ``d / w`` and ``d = ...``; the user's problem: the values of ``x_arg`` and
    ``y_arg = ...`` (a single unnamed row without a y axis).
    """
    c, d = r.config, np.asarray(paper_depths, float)
    if not c.problem:
        return {"y": d[:, None] / r.widths[None, :], "rows": [f"d = {int(v)}" for v in d],
                "ylabel": "$d / w$ (layers with weights / width)", "short": "d/w",
                "name": c.arch}  # fmt: skip
    rows = [f"{c.y_arg} = {_value_text(v)}" for v in d] if c.y_arg else [""]
    y = np.broadcast_to(np.asarray(r.widths, float)[None, :], (d.size, r.widths.size))
    return {"y": y, "rows": rows, "ylabel": c.x_arg, "short": c.x_arg, "name": pu.label(c)}


def trend(s: dict, cells: list, r: Any, depths: np.ndarray) -> list[str]:
    """The built-in nets' verdict: c_loss ~ 2 in the lazy limit and rising with d/w; sharpness
    reduction. ``cells`` from :func:`cell_labels`, ``depths`` the paper's d of each row."""
    paper, labs = "Kalra & Barkeshli", [lab for _, _, lab in cells]
    dw = np.asarray([depths[i] / r.widths[j] for i, j, _ in cells], float)
    lo, hi = labs[int(np.argmin(dw))], labs[int(np.argmax(dw))]
    cl, fr, out = s["c_loss"], s["min_final_ratio_below_2"], []
    if not (depths.max() == 8 and set(r.widths.tolist()) <= set(PAPER_D8)):
        # the lazy limit; at the paper's d = 8 its own numbers are the reference (against_paper)
        out.append(kit.compare(f"c_loss at the smallest d/w ({lo})", cl[lo], paper,
                               "~2 (lazy limit)", ok=bool(1.8 <= cl[lo] <= 3.0)))  # fmt: skip
    if hi != lo:  # no judgement where the grid does not resolve it (equal, or no c < 2)
        ok = None if cl[hi] == cl[lo] else bool(cl[hi] > cl[lo])
        out.append(kit.compare(f"c_loss from {lo} to {hi}", f"{kit.fmt(cl[lo])} -> "
                               f"{kit.fmt(cl[hi])}", paper, "rises with d/w", ok=ok))  # fmt: skip
        ok = bool(fr[hi] < min(fr[lo], 1.0)) if np.isfinite([fr[lo], fr[hi]]).all() else None
        out.append(kit.compare(
            f"smallest lambda_T/lambda_0 for c < 2, {lo} -> {hi}",
            f"{kit.fmt(fr[lo])} -> {kit.fmt(fr[hi])}", paper,
            "drops below 1 as d/w grows (sharpness reduction)", ok=ok))  # fmt: skip
    return out


def check_inputs(config: Any, points: list[dict], build: Callable[[Any, dict], Any]) -> None:
    """The study's ``check_inputs``; ``build(config, point)`` is a cell's problem."""
    c = config
    if c.problem:
        kit.need(len(c.x_values) >= 1, c, "x_values", "a non-empty tuple of numbers with "
                 "problem set: the values of your function's x_arg (--x NAME=V1,V2,...)")  # fmt: skip
        kit.need(not c.y_arg or len(c.y_values) >= 1, c, "y_values", "a non-empty tuple of "
                 "numbers when y_arg is set: its values (--y NAME=V1,V2,...)")  # fmt: skip
        cells = [pu.checked(c, lambda c, p=p: build(c, p), "n") for p in points]
        pu.check_seeds_vary(cells[0], c, "seeds")
        nets = [p.model for p in cells]
    else:
        pu.checked(c, lambda c: build(c, points[0]), "n")  # the data load
        kw = dict(depth=hidden_layers(min(c.depths), c.depth_convention), width=min(c.widths),
                  activation=c.activation, param=c.param)  # fmt: skip
        shape = (8, 8, 1)  # the smallest input: a lower bound on the parameters on other data
        nets = [models.mlp(64, 10, **kw) if c.arch == "mlp" else models.cnn(shape, 10, **kw)]
    dim = min(kit.num_params(net) for net in nets)
    for f in ("lanczos_iters", "lambda0_iters"):
        kit.check_budget(c, f, dim, "the parameter count of the smallest cell")
