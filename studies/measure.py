"""Curvature of an MLP on a built-in dataset at one point in parameter space (``hessian-lab sharpness``).

:func:`measure` builds ``models.mlp`` on sklearn's ``digits`` (8x8 images, 10 classes, no
download) or a seeded ``teacher`` regression task, takes the parameters at the seeded
initialisation or from a checkpoint (:func:`hessian_lab.trainer.save_checkpoint` of the same
model), and measures the Hessian of the mean training loss over all ``n`` examples
(:func:`hessian_lab.full_data_hvp`):

- the ``k`` top eigenvalues by Lanczos (:func:`hessian_lab.top_eigs`); the first is the sharpness;
- the trace (:func:`hessian_lab.trace`, Hutchinson or Hutch++);
- optionally the spectral density by stochastic Lanczos quadrature
  (:func:`hessian_lab.spectral_density`).

Your own network (``problem``) may hold state (BatchNorm statistics, dropout): ``mode="train"``
measures the loss the optimizer sees, BatchNorm on the statistics of all ``n`` examples (the
data as one chunk, whatever ``chunk_size``), ``mode="eval"`` the loss on the running statistics
(the initial ones, or those of a checkpoint that holds ``{"params", "state"}``); dropout is off.

Every option is checked when :class:`Options` is built, and the model, data, loss and checkpoint
are all built before the first product is compiled, so bad input fails in a second, in words.
:func:`save` writes a run directory (``kind`` ``"sharpness"``) that ``hessian-lab report`` reads.

Example:
  >>> from hessian_lab.studies import measure
  >>> m = measure.measure(measure.Options(dataset="teacher", n=16, in_dim=3, width=4, k=1,
  ...                                     num_iters=8, trace_matvecs=4, density=False))
  >>> sorted(m.arrays)
  ['eigenvalues', 'residuals']
  >>> m.summary["num_params"]  # (3 x 4 + 4) + (4 x 4 + 4) + (4 + 1)
  41
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

import hessian_lab as hl
from hessian_lab import data, losses, models, trainer
from hessian_lab import problem as hp
from hessian_lab.io import atomic_write_bytes, save_run

from . import problems
from .kit import (
    MAX_DEPTH,
    check_budget,
    check_ints,
    check_memory,
    check_seeds,
    knob,
    need,
    num_params,
)
from .report import figure_bytes

__all__ = ["KIND", "Measurement", "Options", "check_inputs", "figures", "measure", "save"]

KIND = "sharpness"
_DIGITS = 1797  # examples in sklearn's digits


@dataclasses.dataclass(frozen=True)
class Options:
    """Every option of the measurement; ``describe(Options)`` gives each one's description."""

    dataset: Literal["digits", "teacher"] = knob("digits", "built-in dataset")
    problem: str = knob("", "your entry point FILE.py:FUNCTION or package.module:FUNCTION "
                            "returning (model, loss, data); empty: the built-in MLP")  # fmt: skip
    data: str | None = knob(None, "data spec: digits, mnist:DIR, cifar10:DIR or npz:FILE, "
                                  "?split=test for the test split; none: dataset")  # fmt: skip
    problem_args: tuple[str, ...] = knob((), "arguments of the problem function, NAME=VALUE")
    n: int = knob(256, "number of training examples")
    in_dim: int = knob(16, "input features (teacher dataset only)")
    depth: int = knob(2, "hidden layers of the MLP")
    width: int = knob(64, "hidden units per layer")
    activation: str = knob("relu", "hidden activation: " + ", ".join(models.ACTIVATIONS))
    param: str = knob("sp", "parameterisation: " + ", ".join(models.PARAMS))
    loss: Literal["mse", "xent"] = knob("mse", "loss on the outputs")
    normalization: str = knob(
        "per_example", "MSE convention: " + " or ".join(losses.MSE_NORMALIZATIONS)
    )
    seed: int = knob(0, "seed of the init, data and probes")
    checkpoint: str | None = knob(None, "params saved with trainer.save_checkpoint (same model)")
    k: int = knob(5, "number of top eigenvalues")
    num_iters: int = knob(30, "Lanczos iterations for the top-k")
    trace_matvecs: int = knob(40, "matvec budget of the trace")
    trace_method: Literal["hutchinson", "hutchpp"] = knob("hutchinson", "trace estimator")
    density: bool = knob(True, "estimate the spectral density (SLQ)")
    density_iters: int = knob(30, "Lanczos steps per SLQ probe")
    density_probes: int = knob(2, "SLQ probes")
    chunk_size: int = knob(256, "examples per chunk of the HVP (train-mode BatchNorm: one chunk)")
    mode: Literal["train", "eval"] = knob(
        "train",
        "a model with state (BatchNorm): train (statistics of the n examples) or eval "
        "(running statistics)",
    )
    x64: bool = knob(False, "compute in float64")
    convs: Literal["native", "matmul"] = knob(
        "native",
        "convolutions: native (the library's kernels) or matmul (hessian_lab.convs_as_matmuls: "
        "each as one matrix product, with the linearised product: about 2x faster CNN "
        "products on CPU, for k times a conv input's memory, k the kernel's taps, and the "
        "linearisation kept for all n examples)",
    )

    def __post_init__(self):
        check_ints(self, "n", "in_dim", "width", "k", "num_iters")
        check_ints(self, "density_iters", "density_probes", "chunk_size")
        check_ints(self, "depth", minimum=0, maximum=MAX_DEPTH)
        check_seeds(self, "seed")
        need(self.trace_method in ("hutchinson", "hutchpp"), self, "trace_method",
             "hutchinson or hutchpp")  # fmt: skip
        # Hutchinson needs two probes for a standard error; Hutch++ two of each of its 3 parts.
        check_ints(self, "trace_matvecs", minimum=2 if self.trace_method == "hutchinson" else 6)
        need(self.k <= self.num_iters, self, "k", f"<= num_iters ({self.num_iters})")
        need(self.dataset in ("digits", "teacher"), self, "dataset", "digits or teacher")
        if self.data is not None:
            object.__setattr__(self, "data", str(data.parse_data(self.data)))
        on_digits = (
            self.dataset == "digits" if self.data is None else self.data.startswith("digits")
        )
        need(not on_digits or self.n <= _DIGITS, self, "n", f"<= {_DIGITS} for digits")
        need(self.activation in models.ACTIVATIONS, self, "activation",
             "one of " + ", ".join(models.ACTIVATIONS))  # fmt: skip
        need(self.param in models.PARAMS, self, "param", "one of " + ", ".join(models.PARAMS))
        need(self.loss in ("mse", "xent"), self, "loss", "mse or xent")
        need(self.mode in ("train", "eval"), self, "mode", "train or eval")
        need(self.convs in ("native", "matmul"), self, "convs", "native or matmul")
        need(self.loss != "xent" or self.dataset == "digits", self, "loss",
             "mse for the teacher dataset (xent needs class labels; use dataset digits)")  # fmt: skip
        need(self.normalization in losses.MSE_NORMALIZATIONS, self, "normalization",
             "one of " + ", ".join(losses.MSE_NORMALIZATIONS))  # fmt: skip
        need(self.checkpoint is None or Path(self.checkpoint).is_file(), self, "checkpoint",
             "an existing file")  # fmt: skip
        need(self.data is None or self.dataset == "digits", self, "dataset",
             "left at digits when data is given")  # fmt: skip
        need(isinstance(self.problem, str), self, "problem", "a string")
        if self.problem:
            hp.parse_entry(self.problem)
        hp.parse_args(self.problem_args)
        need(bool(self.problem) or not self.problem_args, self, "problem_args",
             "empty unless problem is set")  # fmt: skip
        if self.problem:
            for f in ("dataset", *_BUILTIN):
                if getattr(self, f) != getattr(_DEFAULTS, f):
                    raise ValueError(
                        f"{f}: describes the built-in MLP and is unused with problem "
                        "set; pass your function's arguments as problem_args"
                    )


_BUILTIN = ("in_dim", "depth", "width", "activation", "param", "loss", "normalization")
_DEFAULTS = Options.__new__(Options)  # the field defaults, without running the checks
for _f in dataclasses.fields(Options):
    object.__setattr__(_DEFAULTS, _f.name, _f.default)


class Measurement(NamedTuple):
    """What :func:`measure` found: the options, named arrays and the summary numbers."""

    options: Options
    arrays: dict[str, np.ndarray]
    summary: dict[str, Any]


def _deferred(o: Options) -> bool:
    """Whether the model's size is known only once the problem is built (own problem or data)."""
    return bool(o.problem) or o.data is not None


def _problem(o: Options) -> tuple[Callable, Any, tuple[jax.Array, jax.Array]]:
    """``(loss_fn, params, batch)``; raises ValueError naming the option, before any compile."""
    state = None
    if o.problem:
        p = problems.user_problem(o.problem, data=o.data or "digits", args=o.problem_args,
                                  seed=o.seed, n=o.n, stateful=True)  # fmt: skip
        net, loss_fn, batch = p.model, p.loss_fn, p.data
        state = p.state
    else:
        if o.data is not None:
            ds = data.load_data(o.data, n=o.n)
            x, y = ds.x.reshape(len(ds.x), -1), ds.y
            if o.loss == "mse" and y.ndim == 1:
                k = 10 if data.parse_data(o.data).kind in ("mnist", "cifar10") else y.max() + 1
                y = data.to_one_hot(y, int(k))
            ds = data.Dataset(x, y)
        elif o.dataset == "digits":
            ds = data.digits(n=o.n, one_hot=o.loss == "mse")
        else:
            ds = data.teacher(o.seed, o.n, o.in_dim, 1)
        net = _net(o, ds)
        kw = {"normalization": o.normalization} if o.loss == "mse" else {}
        loss_fn = losses.make_loss_fn(net.apply, o.loss, **kw)
        batch = (jnp.asarray(ds.x), jnp.asarray(ds.y))
    if _deferred(o):
        _check_budgets(o, num_params(net))
    stateful = state is not None
    need(stateful or o.mode == "train", o, "mode", "train: eval is for a model with state")
    params = net.init(jax.random.split(jax.random.key(o.seed), 4)[0])
    if o.checkpoint is not None:
        params, state = _checkpoint(o, params, state)
    if stateful:  # the plain loss_fn(params, batch) of that state and mode (module doc)
        loss_fn = hl.curvature_loss(loss_fn, state, mode=o.mode)
    return loss_fn, params, batch


def _checkpoint(o: Options, params: Any, state: Any) -> tuple[Any, Any]:
    """Parameters (and, for a model with state, running statistics) from ``o.checkpoint``.

    A model with state takes ``{"params": ..., "state": ...}`` (what training returns) or the
    parameters alone; eval mode needs the statistics, so it refuses the latter.
    """
    if state is not None:
        try:
            both = trainer.load_checkpoint(o.checkpoint, {"params": params, "state": state})
            return both["params"], both["state"]
        except (OSError, KeyError, ValueError):
            need(o.mode == "train", o, "mode", "train when checkpoint holds only parameters "
                 "(eval needs the running statistics: save {'params', 'state'})")  # fmt: skip
    try:
        return trainer.load_checkpoint(o.checkpoint, params), state
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"checkpoint: cannot use {o.checkpoint}: {e}") from e


def _net(o: Options, ds: data.Dataset | None = None) -> models.Model:
    """The built-in MLP; its sizes follow the data (digits and teacher: known in advance)."""
    if ds is None:
        in_dim, out_dim = (64, 10) if o.dataset == "digits" else (o.in_dim, 1)
    else:  # flattened inputs; one-hot targets, int labels (xent) or one regression output
        in_dim, y = ds.x.shape[1], ds.y
        out_dim = y.shape[1] if y.ndim == 2 else int(y.max()) + 1 if y.dtype.kind in "iu" else 1
    return models.mlp(in_dim, out_dim, depth=o.depth, width=o.width, activation=o.activation,
                      param=o.param)  # fmt: skip


def check_inputs(options: Options) -> None:
    """Check the Krylov budgets against the model's parameter count (``jax.eval_shape``).

    ``k``, ``num_iters`` and ``density_iters`` are at most the number of parameters (a Krylov
    basis holds no more orthonormal vectors). Milliseconds; :func:`measure` calls it first.

    Raises:
      ValueError: naming the option.
    """
    if not _deferred(options):  # else measure checks them once the problem is built
        _check_budgets(options, num_params(_net(options)))


def _check_budgets(options: Options, dim: int) -> None:
    size = "problem" if options.problem else "width"
    check_memory(options, size, dim, 8 + options.num_iters)  # + products, intermediates
    for f in ("k", "num_iters") + (("density_iters",) if options.density else ()):
        check_budget(options, f, dim, "the number of parameters")


def measure(options: Options, *, progress: Callable[[int, int], None] | None = None) -> Measurement:
    """Top eigenvalues, trace and (optionally) spectral density of the full-data Hessian.

    Cost: ``num_iters`` (Lanczos) + ``trace_matvecs`` + ``density_iters * density_probes``
    Hessian-vector products over all ``n`` examples. ``progress(done, total)`` counts the
    estimators (2, or 3 with the density) as they finish.

    Raises:
      ValueError: an option the model, data or checkpoint cannot use (named), before any work.
    """
    check_inputs(options)
    report = progress if progress is not None else (lambda done, total: None)
    steps = 3 if options.density else 2
    with jax.enable_x64(True) if options.x64 else contextlib.nullcontext():
        loss_fn, params, batch = _problem(options)
        n = jax.tree.leaves(batch)[0].shape[0]
        train_bn = isinstance(loss_fn, hl.CurvatureLoss) and loss_fn.mode == "train"
        matmul = options.convs == "matmul"
        if matmul:  # the same loss, its convolutions as matrix products
            loss_fn = hl.convs_as_matmuls(loss_fn)
        # ... whose products pay only linearised (CNN, chunks of 250: 1.8x faster than the
        # library convolutions linearised; recomputing the forward pass per product, 0.6x)
        H = hl.full_data_hvp(loss_fn, params, batch, chunk_size=n if train_bn else
                             min(options.chunk_size, n), linearize=matmul)  # fmt: skip
        keys = jax.random.split(jax.random.key(options.seed), 4)[1:]  # [0] initialised params
        v0 = hl.tree.random_like(keys[0], params)
        eig = hl.top_eigs(H, v0, k=options.k, num_iters=options.num_iters)
        report(1, steps)
        tr = hl.trace(H, keys[1], params, num_matvecs=options.trace_matvecs,
                      method=options.trace_method)  # fmt: skip
        report(2, steps)
        arrays = {"eigenvalues": np.asarray(eig.values), "residuals": np.asarray(eig.residuals)}
        summary: dict[str, Any] = {
            "loss": float(loss_fn(params, batch)),
            "sharpness": float(eig.values[0]),
            "trace": float(tr.value),
            "trace_stderr": float(tr.stderr),
            "num_params": int(hl.tree.ravel(params)[0].size),
            "num_matvecs": int(eig.num_matvecs) + int(tr.num_matvecs),
        }
        if options.density:
            sd = hl.spectral_density(H, keys[2], params, num_iters=options.density_iters,
                                     num_probes=options.density_probes)  # fmt: skip
            arrays.update(density_grid=np.asarray(sd.grid), density=np.asarray(sd.density))
            summary["num_matvecs"] += int(sd.num_matvecs)
            report(3, steps)
    return Measurement(options, arrays, summary)


def figures(m: Measurement) -> dict[str, Figure]:
    """The spectral density (log scale) with the top eigenvalues marked; none without a density."""
    if "density" not in m.arrays:
        return {}
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(m.arrays["density_grid"], np.maximum(m.arrays["density"], 1e-12))
    for value in m.arrays["eigenvalues"]:
        ax.axvline(value, color="C3", lw=0.8, alpha=0.6)
    ax.set(xlabel="Hessian eigenvalue", ylabel="density (SLQ)", title="spectral density")
    return {"spectral_density": fig}


def save(m: Measurement, run_dir: str | Path) -> Path:
    """Write ``run_dir``: config.json (the options), arrays.npz, summary.json, figures/*.png|svg."""
    run_dir = Path(run_dir)
    rendered = {name: figure_bytes(fig) for name, fig in figures(m).items()}
    save_run(run_dir, config=dataclasses.asdict(m.options), arrays=m.arrays, summary=m.summary,
             kind=KIND)  # fmt: skip
    for name, (png, svg) in rendered.items():
        atomic_write_bytes(run_dir / "figures" / f"{name}.png", png)
        atomic_write_bytes(run_dir / "figures" / f"{name}.svg", svg)
    return run_dir
