"""Output and errors shared by the CLI's commands: one-line errors, exit codes, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperGroup

from hessian_lab.io import CorruptRunError
from hessian_lab.studies import registry, sweep

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError

QUIET = typer.Option("--quiet", "-q", help="No progress bar or messages (for scripts).")
NO_REPORT = typer.Option("--no-report", help="Do not write figures and report.html.")


class OneLineErrors(TyperGroup):
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


@contextmanager
def progress_bar(quiet: bool, description: str) -> Iterator[Any]:
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


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message)
