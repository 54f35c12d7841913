"""The ``hessian-lab`` command line: run studies and sweeps, merge shards, write reports.

The CLI holds no numerics. ``study run`` maps ``--preset``/``--config``/``--set`` one-to-one onto a
study's ``Config`` fields and hands the run to :mod:`hessian_lab.studies.sweep`; reports come from
:mod:`hessian_lab.studies.report`. Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure;
every error is one line on stderr (``--traceback`` shows the full traceback instead).
"""

from __future__ import annotations

import dataclasses
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from hessian_lab import __version__
from hessian_lab.studies import registry, sweep
from hessian_lab.studies.report import write_report

from .sharpness import sharpness_cmd
from .study import CONFIG, OUT, PRESET, SET, SHARD, run, study_app
from .ui import (
    NO_REPORT,
    QUIET,
    OneLineErrors,
    errors,
    help_without_command,
    progress_bars,
    say,
    state,
)

__all__ = ["app", "main"]


app = typer.Typer(
    cls=OneLineErrors,
    name="hessian-lab",
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(study_app, name="study")


class PhaseKind(StrEnum):
    uv = "uv"
    early = "early"


# `phase-diagram KIND` runs these studies; a study may name its default axes in PHASE_AXES.
PHASE_STUDIES = {PhaseKind.uv: "uv_model", PhaseKind.early: "early_phase_diagram"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hessian-lab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    traceback: Annotated[
        bool, typer.Option("--traceback", help="Show full tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Measure loss-landscape curvature during training; reproduce training-dynamics phenomena.

    Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure; errors are one line on stderr.

    Examples:

    ```
    hessian-lab study list
    hessian-lab study run edge_of_stability --preset tiny --out runs/eos
    hessian-lab report runs/eos
    hessian-lab --version
    ```
    """
    state["traceback"] = traceback
    help_without_command(ctx)


# ---------------------------------------------------------------------------------------------
# merge, phase-diagram, report


@app.command("merge")
def merge_cmd(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard run directories of one sweep.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged run directory.")],
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Merge the shard directories of one sweep and assemble its results.

    Examples:

    ```
    hessian-lab study run early_phase_diagram --preset tiny --shard 0/2 --out runs/epd-0
    hessian-lab study run early_phase_diagram --preset tiny --shard 1/2 --out runs/epd-1
    hessian-lab merge runs/epd-0 runs/epd-1 --out runs/epd
    ```
    """
    with errors():
        with progress_bars(quiet, "merge") as bars:
            outcome = sweep.merge(shard_dirs, out, progress=bars.points)
        say(quiet, f"{out}: {outcome.study} merged from {len(shard_dirs)} directories")
        if not no_report:
            say(quiet, f"report: {write_report(out, results=outcome.results)}")


def _axis(module: Any, name: str, option: str, value: str) -> tuple[str, str]:
    """``(option, "FIELD=V1,V2")`` for ``--x``/``--y``; the field must be the study's axis.

    The field is always named on the command line, so that values meant for one axis never land
    silently on the other; each value is then checked by building the Config with it.
    """
    axes = getattr(module, "PHASE_AXES", None)
    if not axes:
        raise sweep.SweepError(
            f"{option}: {name} has no axis fields; set its grid with --set "
            f"(see 'hessian-lab study show {name}')"
        )
    field = axes[0] if option == "--x" else axes[1]
    key, sep, _ = value.partition("=")
    if not sep:
        raise sweep.SweepError(
            f"{option}: name the field, as in {option} {field}={value} "
            f"({name}: --x sets {axes[0]}, --y sets {axes[1]})"
        )
    if key.strip() != field:
        raise sweep.SweepError(
            f"{option}: the {'horizontal' if option == '--x' else 'vertical'} axis of {name} is "
            f"{field}, not {key.strip()!r} ({name}: --x sets {axes[0]}, --y sets {axes[1]})"
        )
    return option, f"{field}={value.partition('=')[2]}"


def _own_problem(
    module: Any, name: str, problem: str | None, data: str | None, args: list[str]
) -> list[tuple[str, str]]:
    """``--problem``/``--data``/``--arg`` as settings of the study's problem fields.

    A study takes the user's problem when its Config has the fields ``problem``, ``data`` and
    ``problem_args``, and sweeps arguments of the user's function when it names, in
    ``PROBLEM_AXES``, its fields ``(x_arg, x_values, y_arg, y_values)``.
    """
    given = [o for o, v in (("--problem", problem), ("--data", data), ("--arg", args)) if v]
    if not given:
        return []
    fields = {f.name for f in dataclasses.fields(module.Config)}
    if not {"problem", "data", "problem_args"} <= fields or not hasattr(module, "PROBLEM_AXES"):
        raise sweep.SweepError(
            f"{given[0]}: {name} does not take your own problem yet (it needs the Config fields "
            "problem, data, problem_args and PROBLEM_AXES); use 'hessian-lab sharpness' or "
            "'study run edge_of_stability' with it"
        )
    if problem is None:
        raise sweep.SweepError(f"{given[0]}: give --problem FILE.py:FUNCTION with it")
    out = [("--problem", f"problem={problem}")]
    out += [("--data", f"data={data}")] if data is not None else []
    return out + ([("--arg", f"problem_args={','.join(args)}")] if args else [])


def _arg_axis(module: Any, option: str, value: str) -> list[tuple[str, str]]:
    """``--x NAME=V1,V2`` with --problem: sweep the argument NAME of the user's function."""
    arg_field, values_field = (
        module.PROBLEM_AXES[:2] if option == "--x" else module.PROBLEM_AXES[2:]
    )
    key, sep, values = value.partition("=")
    if not sep or not key.strip().isidentifier():
        raise sweep.SweepError(
            f"{option}: name an argument of your function, as in {option} width=16,32, got {value!r}"
        )
    return [(option, f"{arg_field}={key.strip()}"), (option, f"{values_field}={values}")]


@app.command("phase-diagram")
def phase_diagram(
    kind: Annotated[
        PhaseKind,
        typer.Argument(help="uv: UV model; early: early-training MLPs, CNNs or your network."),
    ],
    out: Annotated[Path, OUT],
    x: Annotated[
        str | None,
        typer.Option(
            "--x",
            metavar="FIELD=V1,V2",
            help="Horizontal axis as FIELD=V1,V2,...: early: widths (hidden units per layer); "
            "with --problem: NAME=V1,V2,... sweeps an argument of your function.",
        ),
    ] = None,
    y: Annotated[
        str | None,
        typer.Option(
            "--y",
            metavar="FIELD=V1,V2",
            help="Vertical axis as FIELD=V1,V2,...: early: depths (layers with weights); "
            "with --problem: a second argument of your function.",
        ),
    ] = None,
    problem: Annotated[
        str | None,
        typer.Option(metavar="FILE.py:FUNCTION", help="Your own problem (docs/own_network.md)."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(metavar="SPEC", help="Data spec: digits, mnist:DIR, ...")
    ] = None,
    problem_args: Annotated[
        list[str] | None,
        typer.Option("--arg", metavar="NAME=VALUE", help="Argument of the --problem function."),
    ] = None,
    preset: Annotated[str, PRESET] = "default",
    set_: Annotated[list[str] | None, SET] = None,
    config_file: Annotated[Path | None, CONFIG] = None,
    shard: Annotated[str | None, SHARD] = None,
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Sweep a phase diagram: the uv_model or early_phase_diagram study over two axes.

    **early** (early_phase_diagram): --x widths=V1,V2,... sets the hidden widths (horizontal
    axis), --y depths=V1,V2,... the depths d (vertical axis; layers with weights, the readout
    included, as Kalra & Barkeshli count them: set depth_convention=hidden for hidden layers); the learning-rate
    axis c = eta * lambda0 is set with --set log2_c_min=, log2_c_max=, num_c=. --set arch=cnn
    trains the Myrtle-style CNN (8x8 digits, or --data mnist:DIR).

    **early with your network**: --problem FILE.py:FUNCTION (with --data SPEC and --arg
    NAME=VALUE for its fixed arguments); --x NAME=V1,V2,... sweeps any numeric argument of the
    function (e.g. width) and --y NAME=V1,V2,... optionally a second one (e.g. depth). The
    problem is built for every cell and checked before any work.

    **uv** (uv_model): the grid is kappa x init scale, set with --set phase_kappa_min=,
    phase_kappa_max=, phase_num_kappa=, phase_scale_min=, phase_scale_max=, phase_num_scale=;
    --x and --y are not used.

    The field is always named (--x widths=16,32, not --x 16,32), and every value is checked
    against its field before any work. 'hessian-lab study show NAME' lists all fields.
    Resumable and shardable like 'study run'.

    Examples:

    ```
    hessian-lab phase-diagram early --preset tiny --out runs/epd
    hessian-lab phase-diagram early --x widths=16,32,64 --y depths=2,3 --out runs/epd-grid
    hessian-lab phase-diagram uv --set phase_num_kappa=16 --set phase_num_scale=12 --out runs/uv
    hessian-lab phase-diagram early --shard 1/4 --out runs/epd-1
    hessian-lab phase-diagram early --problem my_net.py:make --data mnist:DIR --x width=16,64 --y depth=1,2 --out runs/mine
    ```
    """
    with errors():
        name = PHASE_STUDIES[kind]
        module = registry.get(name)
        own = _own_problem(module, name, problem, data, problem_args or [])
        if problem is None:
            axes = [_axis(module, name, o, v) for o, v in (("--x", x), ("--y", y)) if v is not None]
        else:
            picked = [(o, v) for o, v in (("--x", x), ("--y", y)) if v is not None]
            axes = own + [a for o, v in picked for a in _arg_axis(module, o, v)]
    run(
        name, out=out, preset=preset, sets=set_ or [], config_file=config_file, shard=shard,
        quiet=quiet, report=not no_report, axes=axes,
    )  # fmt: skip


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A complete run directory.")],
    quiet: Annotated[bool, QUIET] = False,
) -> None:
    """Write figures (PNG and SVG) and a self-contained report.html for a run directory.

    Examples:

    ```
    hessian-lab study run edge_of_stability --preset tiny --out runs/eos --no-report
    hessian-lab report runs/eos
    ```
    """
    with errors():
        path = write_report(run_dir)
        say(quiet, f"report: {path}")


# ---------------------------------------------------------------------------------------------
# sharpness


app.command("sharpness")(sharpness_cmd)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``hessian-lab``)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    app(args=argv, prog_name="hessian-lab")
