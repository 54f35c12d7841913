"""A trivially cheap study that follows the study contract, for testing the CLI and sweep engine.

Registered only by the tests (``registry.register`` or ``HESSIAN_LAB_STUDIES=fake=fake_study``).
Each sweep point is one (learning rate, seed) pair; its "loss curve" is deterministic numpy.
Set ``FAKE_STUDY_SLEEP`` (seconds) to make each point slow, so a test can kill a sweep mid-way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
from matplotlib.figure import Figure

from hessian_lab.io import load_run, save_run

NAME = "fake"


@dataclass(frozen=True)
class Config:
    """Every knob of the fake study."""

    lrs: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
    num_seeds: int = 3
    steps: int = 20
    scale: float = 1.0
    mode: Literal["decay", "grow"] = "decay"
    tag: str = "default"
    log_y: bool = False
    width: int | None = None

    def __post_init__(self):
        if not self.lrs or any(lr <= 0 for lr in self.lrs):
            raise ValueError(f"lrs: must be non-empty and positive, got {self.lrs}")
        if self.num_seeds < 1:
            raise ValueError(f"num_seeds: must be >= 1, got {self.num_seeds}")
        if self.steps < 2:
            raise ValueError(f"steps: must be >= 2, got {self.steps}")
        if self.num_seeds > self.steps:  # a cross-field check, as real studies have
            raise ValueError(
                f"num_seeds: must be at most steps ({self.steps}), got {self.num_seeds}"
            )
        if not 0 < self.scale <= 10:
            raise ValueError(f"scale: must be in (0, 10], got {self.scale}")


TINY = Config(lrs=(0.1, 0.3), num_seeds=2, steps=8, tag="tiny")
DEFAULT = Config()


@dataclass(frozen=True)
class Results:
    config: Config
    losses: np.ndarray  # (num_lrs, num_seeds, steps)
    sharpness: np.ndarray  # (num_lrs, num_seeds)


def points(config: Config) -> list[dict]:
    return [{"lr": lr, "seed": s} for lr in config.lrs for s in range(config.num_seeds)]


def run_point(config: Config, point: dict) -> dict[str, np.ndarray]:
    delay = float(os.environ.get("FAKE_STUDY_SLEEP", "0"))
    if delay:
        time.sleep(delay)
    rng = np.random.default_rng(point["seed"])
    t = np.arange(config.steps)
    rate = point["lr"] if config.mode == "decay" else -0.1 * point["lr"]
    loss = config.scale * np.exp(-rate * t) * (1 + 0.1 * rng.random(config.steps))
    return {"loss": loss, "sharpness": np.asarray(2.0 / point["lr"] + rng.random())}


def assemble(config: Config, point_results: list[dict]) -> Results:
    shape = (len(config.lrs), config.num_seeds)
    losses = np.stack([r["loss"] for r in point_results]).reshape(*shape, config.steps)
    sharp = np.stack([r["sharpness"] for r in point_results]).reshape(shape)
    return Results(config, losses, sharp)


def run(config: Config, *, progress=None) -> Results:
    pts = points(config)
    out = []
    for i, p in enumerate(pts):
        out.append(run_point(config, p))
        if progress is not None:
            progress(i + 1, len(pts))
    return assemble(config, out)


def summary(results: Results) -> dict:
    return {
        "final_loss_min": float(results.losses[..., -1].min()),
        "num_points": int(results.sharpness.size),
        "mode": results.config.mode,
    }


def save(results: Results, run_dir: str | Path) -> None:
    save_run(
        run_dir,
        config=dataclasses.asdict(results.config),
        arrays={"losses": results.losses, "sharpness": results.sharpness},
        summary=summary(results),
        kind=NAME,
    )


def load(run_dir: str | Path) -> Results:
    config, arrays, _ = load_run(run_dir)
    config = Config(**{**config, "lrs": tuple(config["lrs"])})
    return Results(config, arrays["losses"], arrays["sharpness"])


def figures(results: Results) -> dict[str, Figure]:
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    for i, lr in enumerate(results.config.lrs):
        ax.plot(results.losses[i].mean(axis=0), label=f"lr={lr}")
    ax.set(xlabel="step", ylabel="loss", yscale="log" if results.config.log_y else "linear")
    ax.legend()
    fig2 = Figure(figsize=(4, 3))
    ax2 = fig2.add_subplot()
    ax2.plot(results.config.lrs, results.sharpness.mean(axis=1), "o-")
    ax2.set(xlabel="learning rate", ylabel="sharpness")
    return {"loss_curves": fig, "sharpness vs lr": fig2}


@contextmanager
def registered(name: str = "fake", module: ModuleType | None = None) -> Iterator[ModuleType]:
    """Register this module (or ``module``) as study ``name`` for the duration of a test."""
    from hessian_lab.studies import registry

    module = module if module is not None else sys.modules[__name__]
    registry.register(name, module, replace=True)
    try:
        yield module
    finally:
        registry.unregister(name)


def variant(**attrs) -> ModuleType:
    """A copy of this study module with attributes replaced (None deletes one), e.g. no points."""
    copy = ModuleType(f"{__name__}_variant")
    copy.__dict__.update({k: v for k, v in vars(sys.modules[__name__]).items() if k[:2] != "__"})
    copy.__doc__ = __doc__
    for key, value in attrs.items():
        if value is None:
            delattr(copy, key)
        else:
            setattr(copy, key, value)
    return copy
