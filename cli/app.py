"""The ``hessian-lab`` command line: run studies and sweeps, merge shards, write reports.

The CLI holds no numerics. ``study run`` maps ``--preset``/``--config``/``--set`` one-to-one onto a
study's ``Config`` fields and hands the run to :mod:`hessian_lab.studies.sweep`; reports come from
:mod:`hessian_lab.studies.report`. Exit codes: 0 ok, 2 bad usage or input, 1 runtime failure;
every error is one line on stderr (``--traceback`` shows the full traceback instead).
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from hessian_lab.io import read_json
from hessian_lab.studies import registry, sweep
from hessian_lab.studies.report import write_report

from ._sharpness import sharpness_cmd
from ._ui import NO_REPORT, QUIET, OneLineErrors, errors, progress_bar, say, state

__all__ = ["app", "main"]


app = typer.Typer(
    cls=OneLineErrors,
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
    state["traceback"] = traceback


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
    with errors():
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
    with errors():
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
    with errors():
        # Everything that can be wrong with the input is checked before anything is written.
        spec = sweep.parse_shard(shard)
        module = registry.get(name)
        sweep.check_study(module)
        if spec.count > 1 and not sweep.is_sweep(module):
            raise sweep.SweepError(f"--shard: study {name!r} has no sweep points to shard")
        config = _build_config(module, name, preset, config_file, sets)
        label = name if spec.count == 1 else f"{name} shard {spec.index}/{spec.count}"
        with progress_bar(quiet, label) as progress:
            outcome = sweep.execute(name, config, out, shard=spec, progress=progress)
        if not outcome.complete:
            say(
                quiet,
                f"{out}: shard {spec.index}/{spec.count} done; {outcome.done} of "
                f"{outcome.num_points} points present. Merge the shard directories with "
                "'hessian-lab merge SHARD_DIR... --out DIR'.",
            )
            return
        say(quiet, f"{out}: {name} complete")
        if report:
            say(quiet, f"report: {write_report(out, results=outcome.results)}")


_OUT = typer.Option("--out", "-o", help="Run directory (created; rerun to resume).")
_PRESET = typer.Option(help="Starting configuration: the study's TINY or DEFAULT.")
_SET = typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override one Config field; repeat for more."
)
_CONFIG = typer.Option("--config", help="JSON file of Config fields (or a run's config.json).")
_SHARD = typer.Option(metavar="I/N", help="Run only the sweep points with index % N == I.")


@study_app.command("run")
def study_run(
    name: Annotated[str, typer.Argument(help="Study name (see 'hessian-lab study list').")],
    out: Annotated[Path, _OUT],
    preset: Annotated[Preset, _PRESET] = Preset.default,
    set_: Annotated[list[str] | None, _SET] = None,
    config_file: Annotated[Path | None, _CONFIG] = None,
    shard: Annotated[str | None, _SHARD] = None,
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
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
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Merge the shard directories of one sweep and assemble its results.

    Examples:

    ```
    hessian-lab merge runs/epd-0 runs/epd-1 runs/epd-2 --out runs/epd
    ```
    """
    with errors():
        with progress_bar(quiet, "merge") as progress:
            outcome = sweep.merge(shard_dirs, out, progress=progress)
        say(quiet, f"{out}: {outcome.study} merged from {len(shard_dirs)} directories")
        if not no_report:
            say(quiet, f"report: {write_report(out, results=outcome.results)}")


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
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
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
    with errors():
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
    quiet: Annotated[bool, QUIET] = False,
) -> None:
    """Write figures (PNG and SVG) and a self-contained report.html for a run directory.

    Examples:

    ```
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
