"""Every ``hessian-lab`` command shown in a ``--help`` example or a docs code block runs as written.

The rule, for whoever writes help texts and docs:

- Commands are collected from the ``Examples:`` block of every command's ``--help``, and from the
  code blocks (fenced, or indented four spaces) of README.md and docs/**/*.md: every line that
  starts with ``hessian-lab`` (after an optional ``$ ``, or after ``&&``). Prose and tables may
  use placeholders (``NAME``, ``DIR``); code blocks may not.
- The commands of one source run in order, in-process (typer's CliRunner), in a fresh working
  directory, so ``report runs/eos`` finds the run that ``study run ... --out runs/eos`` above it
  wrote. A file that a command reads but the docs assume the reader has (``--config FILE``,
  ``--checkpoint FILE``) is created first, empty.
- Input handling is real, the work is not: every option is parsed and every study ``Config`` is
  built exactly as written (a wrong ``--set`` key or value fails here), its sweep points are
  listed, and the run directory is checked; then, instead of the named study at the named preset
  (minutes), the cheap fake study (tests/fake_study.py, TINY) runs into that directory with the
  same shard, so ``merge``, ``report`` and resuming work on real run directories. The sharpness
  measurement returns fixed numbers once its options are validated (the numbers themselves are
  tested against a dense Hessian in test_cli.py).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import fake_study
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.studies import measure, registry, sweep

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^\s*(```|~~~)")


def _commands_in(line: str) -> list[str]:
    line = line.strip().removeprefix("$ ").strip()
    return [c.strip() for c in line.split("&&") if c.strip().startswith("hessian-lab")]


def markdown_commands(text: str) -> list[str]:
    """``hessian-lab`` lines of the fenced and indented code blocks of a markdown text."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced or line.startswith(("    ", "\t")):
            out += _commands_in(line)
    return out


def help_commands() -> dict[str, list[str]]:
    """``{command path: examples}`` from the ``Examples:`` block of every command's help."""
    found: dict[str, list[str]] = {}

    def walk(command, path: str) -> None:
        text = (command.help or "").split("Examples:", 1)
        found[path] = [c for line in text[1].splitlines() for c in _commands_in(line)] if len(
            text
        ) == 2 else []  # fmt: skip
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "hessian-lab")
    return found


def sources() -> list[tuple[str, list[str]]]:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    out = [(f"help: {path}", cmds) for path, cmds in help_commands().items()]
    out += [(str(p.relative_to(ROOT)), markdown_commands(p.read_text())) for p in docs]
    return [(name, cmds) for name, cmds in out if cmds]


def test_every_command_has_help_examples_and_the_docs_have_commands():
    examples = help_commands()
    assert all(examples.values()), [path for path, cmds in examples.items() if not cmds]
    documented = dict(sources())
    assert len(documented.get("docs/cli.md", [])) >= 10
    assert any(name.startswith("docs/studies/") for name in documented)


def test_markdown_commands_are_read_from_code_blocks_only():
    text = (
        "Run `hessian-lab study run NAME` in prose.\n\n"
        "```console\n$ hessian-lab study list\n# a comment\n```\n\n"
        "    pip install -e . && hessian-lab study show fake\n\n"
        "| `hessian-lab report DIR` | a table |\n"
    )
    assert markdown_commands(text) == ["hessian-lab study list", "hessian-lab study show fake"]


@pytest.fixture
def cheap_work(monkeypatch):
    """Replace the studies' work and the sharpness numbers by the fake study and fixed numbers."""
    real_execute = sweep.execute
    runs: dict[Path, tuple] = {}

    def execute(study, config, run_dir, *, shard=sweep.WHOLE, progress=None, steps=None):
        module = registry.get(study)
        sweep.check_study(module)
        assert isinstance(config, module.Config), (study, type(config))
        if sweep.is_sweep(module):
            assert module.points(config), f"{study}: no sweep points"
        identity = (study, sweep.config_to_dict(config))
        if runs.setdefault(Path(run_dir).resolve(), identity) != identity:
            raise sweep.SweepError(f"out: {run_dir} holds a run with a different config")
        return real_execute("fake", fake_study.TINY, run_dir, shard=shard, progress=progress,
                            steps=steps)  # fmt: skip

    def fixed_numbers(options, *, progress=None):
        arrays = {"eigenvalues": np.linspace(2.0, 1.0, options.k), "residuals": np.zeros(options.k)}
        if options.density:
            arrays.update(density_grid=np.linspace(0.0, 2.0, 16), density=np.ones(16) / 2)
        summary = {"loss": 1.0, "sharpness": 2.0, "trace": 3.0, "trace_stderr": 0.1,
                   "num_params": 10, "num_matvecs": 5}  # fmt: skip
        return measure.Measurement(options, arrays, summary)

    monkeypatch.setattr(sweep, "execute", execute)
    monkeypatch.setattr(measure, "measure", fixed_numbers)
    with fake_study.registered("fake"):
        yield


def _provide_inputs(args: list[str]) -> None:
    """Create the files the docs assume the reader has: --config FILE ({}), --checkpoint FILE."""
    for flag, content in (("--config", "{}"), ("--checkpoint", "")):
        if flag in args[:-1]:
            path = Path(args[args.index(flag) + 1])
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)


@pytest.mark.parametrize(("source", "commands"), sources(), ids=[s for s, _ in sources()])
def test_documented_commands_run_as_written(source, commands, cheap_work, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command, comments=True)[1:]
        _provide_inputs(args)
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{source}: `{command}` failed:\n{result.output}"
