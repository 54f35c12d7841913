"""``hessian-lab sharpness``: curvature of an MLP on a built-in dataset, in one command."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from hessian_lab.io import atomic_write_bytes, save_run
from hessian_lab.studies import sweep
from hessian_lab.studies.report import figure_bytes, write_report

from ._ui import NO_REPORT, QUIET, errors, progress_bar, say


class DatasetName(StrEnum):
    digits = "digits"
    teacher = "teacher"


class LossName(StrEnum):
    mse = "mse"
    xent = "xent"


class TraceMethod(StrEnum):
    hutchinson = "hutchinson"
    hutchpp = "hutchpp"


def _measure(o: dict[str, Any], progress: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the model and data from the options ``o``; return (arrays, summary) of curvature."""
    import jax
    import jax.numpy as jnp

    import hessian_lab as hl
    from hessian_lab import data as hd
    from hessian_lab import losses, models, trainer

    if o["x64"]:
        jax.config.update("jax_enable_x64", True)
    try:  # every option is checked by the library before any tracing
        if o["dataset"] == "digits":
            ds = hd.digits(n=o["n"], one_hot=o["loss"] == "mse")
            in_dim, out_dim = 64, 10
        else:
            if o["loss"] == "xent":
                raise ValueError("--loss xent needs class labels; use --dataset digits")
            ds = hd.teacher(o["seed"], o["n"], o["in_dim"], 1)
            in_dim, out_dim = o["in_dim"], 1
        net = models.mlp(
            in_dim, out_dim, depth=o["depth"], width=o["width"], activation=o["activation"],
            param=o["param"],
        )  # fmt: skip
        k_init, k_v0, k_trace, k_density = jax.random.split(jax.random.key(o["seed"]), 4)
        params = net.init(k_init)
        if o["checkpoint"] is not None:
            try:
                params = trainer.load_checkpoint(o["checkpoint"], params)
            except (OSError, KeyError, ValueError) as e:
                raise ValueError(f"--checkpoint: cannot use {o['checkpoint']}: {e}") from e
        kw = {"normalization": o["normalization"]} if o["loss"] == "mse" else {}
        loss_fn = losses.make_loss_fn(net.apply, o["loss"], **kw)
        batch = (jnp.asarray(ds.x), jnp.asarray(ds.y))
        H = hl.full_data_hvp(loss_fn, params, batch, chunk_size=min(o["chunk_size"], len(ds.x)))
    except ValueError as e:
        raise sweep.SweepError(str(e)) from e
    steps = 3 if o["density"] else 2
    eig = hl.top_eigs(H, hl.tree.random_like(k_v0, params), k=o["k"], num_iters=o["num_iters"])
    progress(1, steps)
    tr = hl.trace(H, k_trace, params, num_matvecs=o["trace_matvecs"], method=o["trace_method"])
    progress(2, steps)
    arrays: dict[str, Any] = {
        "eigenvalues": np.asarray(eig.values),
        "residuals": np.asarray(eig.residuals),
    }
    summary: dict[str, Any] = {
        "loss": float(loss_fn(params, batch)),
        "sharpness": float(eig.values[0]),
        "trace": float(tr.value),
        "trace_stderr": float(tr.stderr),
        "num_params": int(hl.tree.ravel(params)[0].size),
        "num_matvecs": int(eig.num_matvecs) + int(tr.num_matvecs),
    }
    if o["density"]:
        sd = hl.spectral_density(
            H, k_density, params, num_iters=o["density_iters"], num_probes=o["density_probes"]
        )
        arrays.update(density_grid=np.asarray(sd.grid), density=np.asarray(sd.density))
        summary["num_matvecs"] += int(sd.num_matvecs)
        progress(3, steps)
    return arrays, summary


def _density_figure(arrays: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(arrays["density_grid"], np.maximum(arrays["density"], 1e-12))
    for value in arrays["eigenvalues"]:
        ax.axvline(value, color="C3", lw=0.8, alpha=0.6)
    ax.set(xlabel="Hessian eigenvalue", ylabel="density (SLQ)", title="spectral density")
    return fig


def sharpness_cmd(
    dataset: Annotated[DatasetName, typer.Option(help="Built-in dataset.")] = DatasetName.digits,
    n: Annotated[int, typer.Option(help="Number of training examples.")] = 256,
    in_dim: Annotated[int, typer.Option(help="Input features (teacher dataset only).")] = 16,
    depth: Annotated[int, typer.Option(help="Hidden layers of the MLP.")] = 2,
    width: Annotated[int, typer.Option(help="Hidden units per layer.")] = 64,
    activation: Annotated[str, typer.Option(help="relu, tanh, gelu, silu, erf, linear.")] = "relu",
    param: Annotated[str, typer.Option(help="Parameterisation: sp, ntk or mup.")] = "sp",
    loss: Annotated[LossName, typer.Option(help="Loss on the outputs.")] = LossName.mse,
    normalization: Annotated[
        str, typer.Option(help="MSE convention: per_example or per_output.")
    ] = "per_example",
    seed: Annotated[int, typer.Option(help="Seed of the init, data and probes.")] = 0,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Params saved with hessian_lab.trainer.save_checkpoint (same model)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Number of top eigenvalues.")] = 5,
    num_iters: Annotated[int, typer.Option(help="Lanczos iterations for the top-k.")] = 30,
    trace_matvecs: Annotated[int, typer.Option(help="Matvec budget of the trace.")] = 40,
    trace_method: Annotated[TraceMethod, typer.Option(help="Trace estimator.")] = (
        TraceMethod.hutchinson
    ),
    density: Annotated[bool, typer.Option(help="Estimate the spectral density (SLQ).")] = True,
    density_iters: Annotated[int, typer.Option(help="Lanczos steps per SLQ probe.")] = 30,
    density_probes: Annotated[int, typer.Option(help="SLQ probes.")] = 2,
    chunk_size: Annotated[int, typer.Option(help="Examples per chunk of the HVP.")] = 256,
    x64: Annotated[bool, typer.Option("--x64", help="Compute in float64.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also save a run directory here.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Top-k Hessian eigenvalues, trace and spectral density of an MLP on a built-in dataset.

    The Hessian is that of the mean training loss over all n examples (full_data_hvp); the
    sharpness is its largest algebraic eigenvalue. Parameters are the seeded initialisation,
    or a --checkpoint of the same model.

    Examples:

    ```
    hessian-lab sharpness --n 512 --width 128 -k 3
    hessian-lab sharpness --dataset teacher --loss mse --json
    hessian-lab sharpness --checkpoint params.npz --out runs/sharp
    ```
    """
    options = {
        "dataset": dataset.value, "n": n, "in_dim": in_dim, "depth": depth, "width": width,
        "activation": activation, "param": param, "loss": loss.value,
        "normalization": normalization, "seed": seed,
        "checkpoint": None if checkpoint is None else str(checkpoint), "k": k,
        "num_iters": num_iters, "trace_matvecs": trace_matvecs, "trace_method": trace_method.value,
        "density": density, "density_iters": density_iters, "density_probes": density_probes,
        "chunk_size": chunk_size, "x64": x64,
    }  # fmt: skip
    with errors():
        if out is not None:
            sweep.check_run_dir(out, "sharpness", sweep.normalize(options))
        with progress_bar(quiet or json_, "sharpness") as bar:
            arrays, summary = _measure(options, bar or (lambda done, total: None))
        if json_:
            typer.echo(json.dumps({**summary, "eigenvalues": arrays["eigenvalues"].tolist()}))
        else:
            eigs = ", ".join(f"{v:.6g}" for v in arrays["eigenvalues"])
            say(quiet, f"top eigenvalues: {eigs}")
            say(quiet, f"trace: {summary['trace']:.6g} +- {summary['trace_stderr']:.2g}")
            say(quiet, f"loss: {summary['loss']:.6g}  params: {summary['num_params']}  "
                        f"matvecs: {summary['num_matvecs']}")  # fmt: skip
        if out is None:
            return
        figures = {"spectral_density": _density_figure(arrays)} if density else {}
        rendered = {name: figure_bytes(fig) for name, fig in figures.items()}
        save_run(out, config=options, arrays=arrays, summary=summary, kind="sharpness")
        for name, (png, svg) in rendered.items():
            atomic_write_bytes(out / "figures" / f"{name}.png", png)
            atomic_write_bytes(out / "figures" / f"{name}.svg", svg)
        say(quiet or json_, f"{out}: sharpness saved")
        if not no_report:
            path = write_report(out)
            if not json_:
                say(quiet, f"report: {path}")
