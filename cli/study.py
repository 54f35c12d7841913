"""``hessian-lab study list|show|run``, and the run helper that ``phase-diagram`` shares.

``study run`` maps ``--preset``/``--config``/``--set`` one-to-one onto a study's ``Config`` fields
and hands the run to :func:`hessian_lab.studies.sweep.execute`; the report comes from
:func:`hessian_lab.studies.report.write_report`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from hessian_lab.io import CorruptRunError, read_json
from hessian_lab.studies import registry, sweep
from hessian_lab.studies.kit import describe
from hessian_lab.studies.report import write_report

from .ui import (
    NO_REPORT,
    QUIET,
    errors,
    help_without_command,
    note_test_split,
    progress_bars,
    say,
)

__all__ = ["CONFIG", "OUT", "PRESET", "SET", "SHARD", "run", "study_app"]

study_app = typer.Typer(invoke_without_command=True, rich_markup_mode="markdown")


@study_app.callback()
def study_group(ctx: typer.Context) -> None:
    """List, inspect and run studies (each reproduces one phenomenon).

    Examples:

    ```
    hessian-lab study list
    hessian-lab study show catapult
    hessian-lab study run catapult --preset tiny --out runs/catapult
    ```
    """
    help_without_command(ctx)


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
    preset: Annotated[
        str, typer.Option(metavar="NAME", help="Which preset's values to show (listed below).")
    ] = "default",
) -> None:
    """Show a study's Config fields (the keys --set accepts): type, value and meaning.

    For the studies behind 'phase-diagram', also the fields its --x and --y axes set.

    Examples:

    ```
    hessian-lab study show edge_of_stability
    hessian-lab study show edge_of_stability --preset tiny
    ```
    """
    with errors():
        module = registry.get(name)
        sweep.check_study(module)
        config = sweep.preset(module, preset)
        typer.echo(f"{name}: {_describe(module)}")
        typer.echo(f"presets: {', '.join(sweep.presets(module))} (this is {preset})")
        types_ = sweep.field_types(type(config), config)
        docs = describe(type(config))
        for key, value in sweep.config_to_dict(config).items():
            tp = types_.get(key)
            tp_name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
            line = f"  {key:<24} {tp_name:<28} {value!r}"
            typer.echo(f"{line:<80} {docs[key]}" if docs.get(key) else line)
        if sweep.is_sweep(module):
            typer.echo(f"sweep points ({preset}): {len(module.points(config))}")
        axes = getattr(module, "PHASE_AXES", None)
        if axes:
            typer.echo(f"phase-diagram axes: --x {axes[0]}=V1,V2,...  --y {axes[1]}=V1,V2,...")


def _build_config(
    module: Any,
    name: str,
    preset: str,
    config_file: Path | None,
    sets: list[str],
    axes: list[tuple[str, str]],
) -> Any:
    """The preset, then the --config file, then each --set, then the phase-diagram axes.

    Later sources override earlier ones field by field; the Config is built once from the
    result, so its cross-field checks see the final combination, not each step on the way.
    """
    config = sweep.preset(module, preset)
    values: dict[str, Any] = {}
    sources: list[tuple[str, list[str]]] = []  # (how the user typed it, the fields it sets)
    if config_file is not None:
        if config_file.is_dir():
            raise sweep.SweepError(f"--config: {config_file} is a directory, not a JSON file")
        try:
            data = read_json(config_file)
        except CorruptRunError as e:
            raise sweep.SweepError(f"--config: {e}") from e
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            other = data.get("study") or data.get("kind")
            if other and other != name:
                raise sweep.SweepError(f"--config: {config_file} is a config of {other!r}")
            data = data["config"]
        if not isinstance(data, dict):
            raise sweep.SweepError(f"--config: {config_file} must hold a JSON object of fields")
        try:
            values |= sweep.read_overrides(config, data)
        except sweep.SweepError as e:
            raise sweep.SweepError(f"--config {config_file}: {e}") from e
        sources.append((f"--config {config_file}", list(data)))
    _check_once(sets, axes)
    for option, item in [("--set", s) for s in sets] + list(axes):
        try:  # each value read on its own, so an unreadable one names its option
            values |= sweep.read_overrides(config, [item])
        except sweep.SweepError as e:
            raise sweep.SweepError(f"{option} {item}: {e}") from e
        sources.append((f"{option} {item}", [item.partition("=")[0].strip()]))
    try:
        return sweep.replace_checked(config, values)
    except sweep.SweepError as e:
        raise sweep.SweepError(f"{_culprits(sources, str(e))}: {e}") from e


def _culprits(sources: list[tuple[str, list[str]]], message: str) -> str:
    """The options that set a field the Config's complaint names (all of them if it names none).

    ``sources``: (the option as the user typed it, the fields it set).
    """
    named = [
        typed
        for typed, keys in sources
        if any(re.search(rf"\b{re.escape(k)}\b", message) for k in keys)
    ]
    return ", ".join(named or [typed for typed, _ in sources]) or "--preset"


def _check_once(sets: list[str], axes: list[tuple[str, str]]) -> None:
    """Each field is set at most once on the command line (a second value would silently win)."""
    seen: dict[str, str] = {}
    for option, item in [("--set", s) for s in sets] + axes:
        key = item.partition("=")[0].strip()
        if key and key in seen:
            raise sweep.SweepError(
                f"{option} {item}: {key} is already set by {seen[key]}; set each field once"
            )
        seen[key] = f"{option} {item}"


def run(
    name: str,
    *,
    out: Path,
    preset: str,
    sets: list[str],
    config_file: Path | None,
    shard: str | None,
    quiet: bool,
    report: bool,
    axes: Sequence[tuple[str, str]] = (),
) -> None:
    """Build the Config (every input checked before anything is written), run, report.

    Progress: a bar of sweep points (when the study has them) and a bar of the training steps of
    the current run or point (when the study reports them), each with an ETA.
    """
    with errors():
        # Everything that can be wrong with the input is checked before anything is written.
        spec = sweep.parse_shard(shard)
        module = registry.get(name)
        sweep.check_study(module)
        if spec.count > 1 and not sweep.is_sweep(module):
            raise sweep.SweepError(f"--shard: study {name!r} has no sweep points to shard")
        config = _build_config(module, name, preset, config_file, sets, list(axes))
        if hasattr(config, "problem_args"):  # the studies that take a data spec
            note_test_split(quiet, config.data, "data")
        label = name if spec.count == 1 else f"{name} shard {spec.index}/{spec.count}"
        with progress_bars(quiet, label) as bars:
            outcome = sweep.execute(
                name, config, out, shard=spec, progress=bars.points, steps=bars.steps
            )
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


OUT = typer.Option("--out", "-o", help="Run directory (created; rerun to resume).")
PRESET = typer.Option(
    metavar="NAME",
    help="Starting configuration: tiny, default, or another preset of the study "
    "('hessian-lab study show NAME' lists them).",
)
SET = typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override one Config field; repeat for more."
)
CONFIG = typer.Option("--config", help="JSON file of Config fields (or a run's config.json).")
SHARD = typer.Option(metavar="I/N", help="Run only the sweep points with index % N == I.")


@study_app.command("run")
def study_run(
    name: Annotated[str, typer.Argument(help="Study name (see 'hessian-lab study list').")],
    out: Annotated[Path, OUT],
    preset: Annotated[str, PRESET] = "default",
    set_: Annotated[list[str] | None, SET] = None,
    config_file: Annotated[Path | None, CONFIG] = None,
    shard: Annotated[str | None, SHARD] = None,
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Run a study into a run directory, resuming a previous run there.

    Settings apply in order: --preset, then --config, then each --set, each overriding the
    one before; the Config is checked once, on the result, so the order of the --set options
    does not matter. Values are read by the field's type: 3, 0.1, true, text, none (optional
    fields), and tuples as 0.1,0.2,0.4;
    'hessian-lab study show NAME' lists the fields.

    Examples:

    ```
    hessian-lab study run edge_of_stability --preset tiny --out runs/eos
    hessian-lab study run momentum --set lrs=0.3,0.4 --set momentum=0.8 --out runs/mom
    hessian-lab study run early_phase_diagram --shard 0/3 --out runs/epd-0
    ```
    """
    run(
        name, out=out, preset=preset, sets=set_ or [], config_file=config_file, shard=shard,
        quiet=quiet, report=not no_report,
    )  # fmt: skip
