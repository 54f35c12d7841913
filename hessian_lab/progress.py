"""Progress of a training loop, reported on the host between compiled chunks.

``progress`` arguments across the library take ``None`` (silent), a callable
``progress(done, total)`` (counts in training steps; called after every chunk, with ``done``
non-decreasing and ending at ``total``), or ``True`` for a rich progress bar with an ETA. Nothing
here enters a compiled function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["bar_columns", "check", "reporter"]


def check(progress) -> None:
    """Raise ``ValueError`` unless ``progress`` is None, True or a callable."""
    if not (progress is None or progress is True or callable(progress)):
        raise ValueError(
            f"progress: must be None, True (a progress bar) or a callable progress(done, total), "
            f"got {progress!r}"
        )


def bar_columns() -> tuple:
    """The columns of every progress bar we draw: description, bar, done/total, elapsed, ETA."""
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip


@contextmanager
def reporter(progress, total: int, *, description: str = "training") -> Iterator[Callable]:
    """Yield ``report(done)``, which forwards ``(done, total)`` to ``progress``.

    ``progress=True`` shows a rich bar (steps done, elapsed time, ETA) while the block runs.
    """
    check(progress)
    if progress is None:
        yield lambda done: None
    elif progress is True:
        with Progress(*bar_columns(), transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)
    else:
        yield lambda done: progress(done, total)
