"""Output and errors shared by the CLI's commands: one-line errors, exit codes, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import typer
from rich.console import Console
from rich.progress import Progress
from typer.core import TyperGroup

from hessian_lab import data
from hessian_lab.io import CorruptRunError
from hessian_lab.progress import bar_columns
from hessian_lab.studies import registry, sweep

ProgressFn = Callable[[int, int], None]

QUIET = typer.Option("--quiet", "-q", help="No progress bar or messages (for scripts).")
NO_REPORT = typer.Option("--no-report", help="Do not write figures and report.html.")


class OneLineErrors(TyperGroup):
    """Print usage errors as one line (``error: ...``) instead of a usage box; exit code 2.

    Only typer's public exceptions are caught: ``typer.TyperException`` is the base of every
    usage error of the click that typer vendors (the separate ``click`` package's classes are not
    the ones typer raises), with ``exit_code``, ``format_message()`` and, for usage errors,
    ``ctx``.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        except typer.TyperException as e:
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


state = {"traceback": False}


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn known failures into one-line errors with the documented exit codes."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        fail("interrupted; rerun the same command to resume", 130)
    except (sweep.SweepError, CorruptRunError, registry.UnknownStudyError) as e:
        if state["traceback"]:
            raise
        fail(str(e), 2)
    except Exception as e:
        if state["traceback"]:
            raise
        known = (sweep.StudyError, registry.StudyImportError, OSError)
        fail(str(e) if isinstance(e, known) else f"{type(e).__name__}: {e}", 1)


class Bars(NamedTuple):
    """Progress callbacks ``(done, total)``: sweep points, and training steps of the current run."""

    points: ProgressFn | None
    steps: ProgressFn | None


@contextmanager
def progress_bars(quiet: bool, description: str) -> Iterator[Bars]:
    """Yield :class:`Bars` drawing rich bars with ETA on stderr (both None if ``quiet``).

    A bar appears on its first update, so input errors found before any work print none, and a
    study that does not report steps shows only its points. The steps bar restarts (and its ETA
    with it) when a sweep point finishes.
    """
    if quiet:
        yield Bars(None, None)
        return
    bar = Progress(*bar_columns(), console=Console(stderr=True))
    tasks: dict[str, Any] = {}
    # Points finished so far (None until the first points update); a change restarts the steps.
    seen = {"points": None, "steps_of": None}

    def task(name: str, label: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(label, total=total)
        bar.update(tasks[name], completed=done, total=total, description=label)

    def points(done: int, total: int) -> None:
        seen["points"] = done
        task("points", f"{description}: points", done, total)

    def steps(done: int, total: int) -> None:
        label = f"{description}: steps"
        if seen["points"] is not None:
            label = f"{description}: steps of point {seen['points'] + 1}"
            if "steps" in tasks and seen["steps_of"] != seen["points"]:
                bar.reset(tasks["steps"], total=total)
            seen["steps_of"] = seen["points"]
        task("steps", label, done, total)

    try:
        yield Bars(points, steps)
    except BaseException:
        if tasks:  # erase the bars, so that the error is the only line left on stderr
            bar.live.transient = True
        raise
    finally:
        if tasks:
            bar.stop()


def note_test_split(quiet: bool, spec: str | None, option: str) -> None:
    """Say on stderr that a run uses a dataset's test split (the default is train)."""
    if not quiet and spec and data.parse_data(spec).split == "test":
        typer.echo(f"note: {option} {spec} uses the TEST split", err=True)


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)


def help_without_command(ctx: typer.Context) -> None:
    """A group called without a command prints its help and exits 2 (as click's no_args_is_help)."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), nl=False)  # rich prints the help itself and returns ""
        raise typer.Exit(2)
