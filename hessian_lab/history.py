"""What a training run records: :class:`History`, and saving it as a run directory.

A history is the per-step host scalars of one :func:`hessian_lab.trainer.train` run plus why and
when it stopped. :func:`save_history` writes it with :func:`hessian_lab.io.save_run` (config,
``arrays.npz``, summary) and adds ``history.csv`` with the scalar metrics, one row per step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import io

__all__ = ["STOP_REASONS", "History", "load_history", "save_history"]

# Indexed by the trainer's integer stop code (0 = still running).
STOP_REASONS = ("running", "num_steps", "diverged", "loss_goal", "accuracy_goal")


@dataclass(frozen=True)
class History:
    """Per-step host scalars of one run.

    Attributes:
      metrics: name -> numpy array with leading axis = steps recorded (``loss``, ``learning_rate``,
        ``accuracy`` if an ``accuracy_fn`` was given, and every callback metric; NaN where a
        callback did not run).
      stop_reason: one of "num_steps", "diverged", "loss_goal", "accuracy_goal".
      stop_step: the step at which the run stopped (-1 if it ran all ``num_steps``).
      num_updates: updates applied; the returned params are theta_{num_updates}.
    """

    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    stop_reason: str = "num_steps"
    stop_step: int = -1
    num_updates: int = 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.metrics[name]

    @property
    def diverged(self) -> bool:
        """Whether finite, valid inputs blew up in training (bad input raises, never lands here)."""
        return self.stop_reason == "diverged"

    @property
    def diverged_step(self) -> int:
        """The step at which the run diverged, or -1."""
        return self.stop_step if self.diverged else -1


def save_history(
    history: History, run_dir: str | os.PathLike, *, config: dict | None = None
) -> Path:
    """Save a history as ``arrays.npz`` + ``history.csv`` (scalar metrics) in ``run_dir``, atomically."""
    arrays = dict(history.metrics)
    summary = {
        "stop_reason": history.stop_reason,
        "stop_step": history.stop_step,
        "num_updates": history.num_updates,
    }
    run_dir = io.save_run(
        run_dir, config=config or {}, arrays=arrays, summary=summary, kind="history"
    )
    n = len(next(iter(arrays.values()))) if arrays else 0
    cols = {"step": np.arange(n)} | {k: v for k, v in arrays.items() if np.ndim(v) == 1}
    io.write_csv(Path(run_dir) / "history.csv", cols)
    return Path(run_dir)


def load_history(run_dir: str | os.PathLike) -> History:
    """Load a history saved by :func:`save_history`.

    Raises:
      FileNotFoundError: ``run_dir`` holds no ``config.json``.
      CorruptRunError: a file is unreadable, or the summary lacks a stop reason, stop step or
        update count (or holds an unknown stop reason).
    """
    _, arrays, summary = io.load_run(run_dir)
    try:
        reason = summary["stop_reason"]
        stop_step, num_updates = int(summary["stop_step"]), int(summary["num_updates"])
    except (KeyError, TypeError, ValueError) as e:
        raise io.CorruptRunError(f"cannot read {run_dir}: not a saved history ({e!r})") from None
    if reason not in STOP_REASONS:
        raise io.CorruptRunError(f"cannot read {run_dir}: unknown stop_reason {reason!r}")
    return History(arrays, reason, stop_step, num_updates)
