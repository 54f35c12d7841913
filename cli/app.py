"""The ``hessian-lab`` command line: run studies and sweeps, merge shards, write reports.

The CLI holds no numerics. ``study run`` maps ``--preset``/``--config``/``--set`` one-to-one onto a
study's ``Config`` fields and hands the run to :mod:`hessian_lab.studies.sweep`; reports come from
:mod:`hessian_lab.studies.report`. Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure;
every error is one line on stderr (``--traceback`` shows the full traceback instead).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from typer.core import TyperGroup

from hessian_lab.io import CorruptRunError, atomic_write_bytes, read_json, save_run
from hessian_lab.studies import registry, sweep
from hessian_lab.studies.report import figure_bytes, write_report

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError


__all__ = ["app", "main"]


class _OneLineErrors(TyperGroup):
    """Print usage errors as one line (``error: ...``) instead of a usage box; exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        except NoArgsIsHelpError as e:
            typer.echo(e.ctx.get_help(), nl=False)  # rich prints the help itself
            sys.exit(e.exit_code)
        except typer.TyperException as e:  # typer's (vendored click) usage errors
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {_one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="hessian-lab",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
study_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(study_app, name="study")


class Preset(StrEnum):
    tiny = "tiny"
    default = "default"


class PhaseKind(StrEnum):
    uv = "uv"
    early = "early"


# `phase-diagram KIND` runs these studies; a study may name its default axes in PHASE_AXES.
PHASE_STUDIES = {PhaseKind.uv: "uv_model", PhaseKind.early: "early_phase_diagram"}

_state = {"traceback": False}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {_one_line(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def _errors() -> Iterator[None]:
    """Turn known failures into one-line errors with the documented exit codes."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume", 130)
    except (sweep.SweepError, CorruptRunError, registry.UnknownStudyError) as e:
        if _state["traceback"]:
            raise
        _fail(str(e), 2)
    except Exception as e:
        if _state["traceback"]:
            raise
        known = (sweep.StudyError, registry.StudyImportError, OSError)
        _fail(str(e) if isinstance(e, known) else f"{type(e).__name__}: {e}", 1)


@contextmanager
def _progress(quiet: bool, description: str) -> Iterator[Any]:
    """Yield a ``progress(done, total)`` callable drawing a rich bar with ETA (None if quiet)."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    # Started on the first update, so that input errors found before any work print no bar.
    live: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if not live:
            live["bar"] = Progress(*columns, console=Console(stderr=True))
            live["bar"].start()
            live["task"] = live["bar"].add_task(description, total=total)
        live["bar"].update(live["task"], completed=done, total=total)

    try:
        yield update
    except BaseException:
        if live:  # erase the bar, so that the error is the only line left on stderr
            live["bar"].live.transient = True
        raise
    finally:
        if live:
            live["bar"].stop()


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)


@app.callback()
def _root(
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show full tracebacks instead of one-line errors.")
    ] = False,
) -> None:
    """Measure loss-landscape curvature during training; reproduce training-dynamics phenomena.

    Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure; errors are one line on stderr.

    Examples:

    ```
    hessian-lab study list
    hessian-lab study run edge_of_stability --preset tiny --out runs/eos
    hessian-lab report runs/eos
    ```
    """
    _state["traceback"] = traceback


@study_app.callback()
def _study() -> None:
    """List, inspect and run studies (each reproduces one phenomenon).

    Examples:

    ```
    hessian-lab study list
    hessian-lab study show catapult
    hessian-lab study run catapult --preset tiny --out runs/catapult
    ```
    """


# ---------------------------------------------------------------------------------------------
# study list / show / run


def _describe(module: Any) -> str:
    doc = (module.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


@study_app.command("list")
def study_list(
    all_: Annotated[
        bool, typer.Option("--all", help="Also list planned studies that are not available yet.")
    ] = False,
) -> None:
    """List the studies that can run.

    Examples:

    ```
    hessian-lab study list
    hessian-lab study list --all
    ```
    """
    with _errors():
        status = registry.available()
        shown = 0
        for name, reason in status.items():
            if reason is None:
                typer.echo(f"{name:<22} {_describe(registry.get(name))}")
                shown += 1
            elif all_:
                typer.echo(f"{name:<22} (unavailable: {reason})")
        if not shown and not all_:
            typer.echo("no studies available yet (see 'hessian-lab study list --all')", err=True)


@study_app.command("show")
def study_show(
    name: Annotated[str, typer.Argument(help="Study name (see 'hessian-lab study list').")],
    preset: Annotated[Preset, typer.Option(help="Which preset's values to show.")] = (
        Preset.default
    ),
) -> None:
    """Show a study's Config fields (the keys --set accepts), their types and values.

    Examples:

    ```
    hessian-lab study show edge_of_stability
    hessian-lab study show edge_of_stability --preset tiny
    ```
    """
    with _errors():
        module = registry.get(name)
        sweep.check_study(module)
        config = module.TINY if preset is Preset.tiny else module.DEFAULT
        typer.echo(f"{name}: {_describe(module)}")
        types_ = sweep.field_types(type(config), config)
        for key, value in sweep.config_to_dict(config).items():
            tp = types_.get(key)
            tp_name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            typer.echo(f"  {key:<24} {tp_name:<28} {value!r}")
        if sweep.is_sweep(module):
            typer.echo(f"sweep points ({preset.value}): {len(module.points(config))}")


def _build_config(module: Any, name: str, preset: Preset, config_file: Path | None, sets: list):
    config = module.TINY if preset is Preset.tiny else module.DEFAULT
    if config_file is not None:
        data = read_json(config_file)
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            other = data.get("study") or data.get("kind")
            if other and other != name:
                raise sweep.SweepError(f"--config: {config_file} is a config of {other!r}")
            data = data["config"]
        if not isinstance(data, dict):
            raise sweep.SweepError(f"--config: {config_file} must hold a JSON object of fields")
        config = sweep.with_overrides(config, data)
    if sets:
        config = sweep.with_overrides(config, sets)
    return config


def _run(
    name: str,
    *,
    out: Path,
    preset: Preset,
    sets: list[str],
    config_file: Path | None,
    shard: str | None,
    quiet: bool,
    report: bool,
) -> None:
    with _errors():
        # Everything that can be wrong with the input is checked before anything is written.
        spec = sweep.parse_shard(shard)
        module = registry.get(name)
        sweep.check_study(module)
        if spec.count > 1 and not sweep.is_sweep(module):
            raise sweep.SweepError(f"--shard: study {name!r} has no sweep points to shard")
        config = _build_config(module, name, preset, config_file, sets)
        label = name if spec.count == 1 else f"{name} shard {spec.index}/{spec.count}"
        with _progress(quiet, label) as progress:
            outcome = sweep.execute(name, config, out, shard=spec, progress=progress)
        if not outcome.complete:
            _say(
                quiet,
                f"{out}: shard {spec.index}/{spec.count} done; {outcome.done} of "
                f"{outcome.num_points} points present. Merge the shard directories with "
                "'hessian-lab merge SHARD_DIR... --out DIR'.",
            )
            return
        _say(quiet, f"{out}: {name} complete")
        if report:
            _say(quiet, f"report: {write_report(out, results=outcome.results)}")


_OUT = typer.Option("--out", "-o", help="Run directory (created; rerun to resume).")
_PRESET = typer.Option(help="Starting configuration: the study's TINY or DEFAULT.")
_SET = typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override one Config field; repeat for more."
)
_CONFIG = typer.Option("--config", help="JSON file of Config fields (or a run's config.json).")
_SHARD = typer.Option(metavar="I/N", help="Run only the sweep points with index % N == I.")
_QUIET = typer.Option("--quiet", "-q", help="No progress bar or messages (for scripts).")
_NO_REPORT = typer.Option("--no-report", help="Do not write figures and report.html.")


@study_app.command("run")
def study_run(
    name: Annotated[str, typer.Argument(help="Study name (see 'hessian-lab study list').")],
    out: Annotated[Path, _OUT],
    preset: Annotated[Preset, _PRESET] = Preset.default,
    set_: Annotated[list[str] | None, _SET] = None,
    config_file: Annotated[Path | None, _CONFIG] = None,
    shard: Annotated[str | None, _SHARD] = None,
    quiet: Annotated[bool, _QUIET] = False,
    no_report: Annotated[bool, _NO_REPORT] = False,
) -> None:
    """Run a study into a run directory, resuming a previous run there.

    Settings apply in order: --preset, then --config, then each --set. Values are read by
    the field's type: 3, 0.1, true, text, and tuples as 0.1,0.2,0.4.

    Examples:

    ```
    hessian-lab study run edge_of_stability --preset tiny --out runs/eos
    hessian-lab study run momentum --set lr=0.01 --set betas=0.0,0.9 --out runs/mom
    hessian-lab study run early_phase_diagram --shard 0/3 --out runs/epd-0
    ```
    """
    _run(
        name, out=out, preset=preset, sets=set_ or [], config_file=config_file, shard=shard,
        quiet=quiet, report=not no_report,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# merge, phase-diagram, report


@app.command("merge")
def merge_cmd(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard run directories of one sweep.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged run directory.")],
    quiet: Annotated[bool, _QUIET] = False,
    no_report: Annotated[bool, _NO_REPORT] = False,
) -> None:
    """Merge the shard directories of one sweep and assemble its results.

    Examples:

    ```
    hessian-lab merge runs/epd-0 runs/epd-1 runs/epd-2 --out runs/epd
    ```
    """
    with _errors():
        with _progress(quiet, "merge") as progress:
            outcome = sweep.merge(shard_dirs, out, progress=progress)
        _say(quiet, f"{out}: {outcome.study} merged from {len(shard_dirs)} directories")
        if not no_report:
            _say(quiet, f"report: {write_report(out, results=outcome.results)}")


def _axis(module: Any, which: int, value: str) -> str:
    """``FIELD=V1,V2`` as given, or ``V1,V2`` on the study's default axis (``PHASE_AXES``)."""
    key, sep, _ = value.partition("=")
    if sep and key.strip():
        return value
    axes = getattr(module, "PHASE_AXES", None)
    if not axes or len(axes) <= which:
        option = "--x" if which == 0 else "--y"
        raise sweep.SweepError(
            f"{option}: this study names no default axis; write {option} FIELD=V1,V2,..."
        )
    return f"{axes[which]}={value}"


@app.command("phase-diagram")
def phase_diagram(
    kind: Annotated[PhaseKind, typer.Argument(help="uv: UV model; early: early-training FCNs.")],
    out: Annotated[Path, _OUT],
    x: Annotated[
        str | None,
        typer.Option("--x", metavar="FIELD=V1,V2", help="Horizontal axis: a Config field's grid."),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option("--y", metavar="FIELD=V1,V2", help="Vertical axis: a Config field's grid."),
    ] = None,
    preset: Annotated[Preset, _PRESET] = Preset.default,
    set_: Annotated[list[str] | None, _SET] = None,
    config_file: Annotated[Path | None, _CONFIG] = None,
    shard: Annotated[str | None, _SHARD] = None,
    quiet: Annotated[bool, _QUIET] = False,
    no_report: Annotated[bool, _NO_REPORT] = False,
) -> None:
    """Sweep a phase diagram: the uv_model or early_phase_diagram study over two axes.

    Each axis sets one Config field to a grid of values, like --set FIELD=V1,V2; with just
    V1,V2 the study's default axis field is used. See the fields with 'hessian-lab study show'.
    Resumable and shardable like 'study run'.

    Examples:

    ```
    hessian-lab phase-diagram early --preset tiny --out runs/epd
    hessian-lab phase-diagram uv --set phase_num_kappa=16 --set phase_num_scale=12 --out runs/uv
    hessian-lab phase-diagram early --x FIELD=0.5,1,2,4 --y FIELD=1,2,4 --out runs/epd
    hessian-lab phase-diagram early --shard 1/4 --out runs/epd-1
    ```
    """
    with _errors():
        name = PHASE_STUDIES[kind]
        module = registry.get(name)
        sets = list(set_ or [])
        sets += [_axis(module, i, v) for i, v in enumerate((x, y)) if v is not None]
    _run(
        name, out=out, preset=preset, sets=sets, config_file=config_file, shard=shard,
        quiet=quiet, report=not no_report,
    )  # fmt: skip


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A complete run directory.")],
    quiet: Annotated[bool, _QUIET] = False,
) -> None:
    """Write figures (PNG and SVG) and a self-contained report.html for a run directory.

    Examples:

    ```
    hessian-lab report runs/eos
    ```
    """
    with _errors():
        path = write_report(run_dir)
        _say(quiet, f"report: {path}")


# ---------------------------------------------------------------------------------------------
# sharpness


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


@app.command("sharpness")
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
    quiet: Annotated[bool, _QUIET] = False,
    no_report: Annotated[bool, _NO_REPORT] = False,
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
    with _errors():
        if out is not None:
            sweep.check_run_dir(out, "sharpness", sweep._normalize(options))
        with _progress(quiet or json_, "sharpness") as progress:
            arrays, summary = _measure(options, progress or (lambda done, total: None))
        if json_:
            typer.echo(json.dumps({**summary, "eigenvalues": arrays["eigenvalues"].tolist()}))
        else:
            eigs = ", ".join(f"{v:.6g}" for v in arrays["eigenvalues"])
            _say(quiet, f"top eigenvalues: {eigs}")
            _say(quiet, f"trace: {summary['trace']:.6g} +- {summary['trace_stderr']:.2g}")
            _say(quiet, f"loss: {summary['loss']:.6g}  params: {summary['num_params']}  "
                        f"matvecs: {summary['num_matvecs']}")  # fmt: skip
        if out is None:
            return
        figures = {"spectral_density": _density_figure(arrays)} if density else {}
        rendered = {name: figure_bytes(fig) for name, fig in figures.items()}
        save_run(out, config=options, arrays=arrays, summary=summary, kind="sharpness")
        for name, (png, svg) in rendered.items():
            atomic_write_bytes(out / "figures" / f"{name}.png", png)
            atomic_write_bytes(out / "figures" / f"{name}.svg", svg)
        _say(quiet or json_, f"{out}: sharpness saved")
        if not no_report:
            path = write_report(out)
            if not json_:
                _say(quiet, f"report: {path}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``hessian-lab``)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    app(args=argv, prog_name="hessian-lab")
