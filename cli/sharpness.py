"""``hessian-lab sharpness``: options mapped one-to-one onto :class:`studies.measure.Options`."""

from __future__ import annotations

import dataclasses
import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from hessian_lab.studies import measure, rundir, sweep
from hessian_lab.studies.kit import describe
from hessian_lab.studies.report import write_report

from .ui import NO_REPORT, QUIET, errors, note_test_split, progress_bars, say

HELP = {
    field: text[0].upper() + text[1:] + "." for field, text in describe(measure.Options).items()
}
DEFAULT = measure.Options()


class DatasetName(StrEnum):
    digits = "digits"
    teacher = "teacher"


class LossName(StrEnum):
    mse = "mse"
    xent = "xent"


class StateMode(StrEnum):
    train = "train"
    eval = "eval"


class ConvMode(StrEnum):
    native = "native"
    matmul = "matmul"


class TraceMethod(StrEnum):
    hutchinson = "hutchinson"
    hutchpp = "hutchpp"


# Options whose flag is not --field-name.
FLAGS = {"k": "-k", "problem_args": "--arg"}


def _opt(field: str, *names: str) -> Any:
    return typer.Option(*names, help=HELP[field])


def _options(**values) -> measure.Options:
    """Build the Options; a rejected value is reported under the option's command-line name."""
    try:
        options = measure.Options(**values)
        measure.check_inputs(options)  # the Krylov budgets against the parameter count
    except ValueError as e:
        raise sweep.SweepError(_as_option(str(e))) from e
    return options


def _as_option(message: str) -> str:
    """``"in_dim: must be ..."`` -> ``"--in-dim: must be ..."`` (the name the user typed)."""
    field = re.match(r"(\w+):", message)
    if not field or field.group(1) not in HELP:
        return message
    flag = FLAGS.get(field.group(1), "--" + field.group(1).replace("_", "-"))
    # Other options the message compares with ("<= num_iters (4)") by their flags too.
    rest = re.sub(
        r"\b([a-z]+_[a-z_]+)\b",
        lambda m: (
            FLAGS.get(m.group(1), "--" + m.group(1).replace("_", "-"))
            if m.group(1) in HELP
            else m.group(1)
        ),
        message[field.end() - 1 :],
    )
    return flag + rest


def sharpness_cmd(
    dataset: Annotated[DatasetName, _opt("dataset")] = DatasetName.digits,
    problem: Annotated[str, typer.Option(metavar="FILE.py:FUNCTION", help=HELP["problem"])] = "",
    data: Annotated[str | None, typer.Option(metavar="SPEC", help=HELP["data"])] = None,
    problem_args: Annotated[
        list[str] | None,
        typer.Option(
            "--arg",
            metavar="NAME=VALUE",
            help="Argument of the --problem function; repeat for more.",
        ),
    ] = None,
    n: Annotated[int, _opt("n")] = DEFAULT.n,
    in_dim: Annotated[int, _opt("in_dim")] = DEFAULT.in_dim,
    depth: Annotated[int, _opt("depth")] = DEFAULT.depth,
    width: Annotated[int, _opt("width")] = DEFAULT.width,
    activation: Annotated[str, _opt("activation")] = DEFAULT.activation,
    param: Annotated[str, _opt("param")] = DEFAULT.param,
    loss: Annotated[LossName, _opt("loss")] = LossName.mse,
    normalization: Annotated[str, _opt("normalization")] = DEFAULT.normalization,
    seed: Annotated[int, _opt("seed")] = DEFAULT.seed,
    checkpoint: Annotated[Path | None, _opt("checkpoint")] = None,
    k: Annotated[int, _opt("k", "--k", "-k")] = DEFAULT.k,
    num_iters: Annotated[int, _opt("num_iters")] = DEFAULT.num_iters,
    trace_matvecs: Annotated[int, _opt("trace_matvecs")] = DEFAULT.trace_matvecs,
    trace_method: Annotated[TraceMethod, _opt("trace_method")] = TraceMethod.hutchinson,
    density: Annotated[bool, _opt("density")] = DEFAULT.density,
    density_iters: Annotated[int, _opt("density_iters")] = DEFAULT.density_iters,
    density_probes: Annotated[int, _opt("density_probes")] = DEFAULT.density_probes,
    chunk_size: Annotated[int, _opt("chunk_size")] = DEFAULT.chunk_size,
    mode: Annotated[StateMode, _opt("mode")] = StateMode.train,
    x64: Annotated[bool, _opt("x64", "--x64")] = DEFAULT.x64,
    convs: Annotated[ConvMode, _opt("convs")] = ConvMode.native,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also save a run directory here.")
    ] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
    quiet: Annotated[bool, QUIET] = False,
    no_report: Annotated[bool, NO_REPORT] = False,
) -> None:
    """Top-k Hessian eigenvalues, trace and spectral density of a network on a dataset.

    The network is the built-in MLP, or your own: --problem FILE.py:FUNCTION (or
    package.module:FUNCTION) returns (model, loss, data), see docs/own_network.md; --arg
    NAME=VALUE passes it arguments. A model with BatchNorm is measured in train mode (the
    statistics of the n examples, one chunk) or, with --mode eval, on its running statistics.
    On CPU, --convs matmul computes a CNN's convolutions as matrix products (2-3x faster
    products, more memory; the same numbers to rounding). --data names the examples: digits, mnist:DIR,
    cifar10:DIR or npz:FILE, with ?split=test for the test split (default: train).

    The Hessian is that of the mean training loss over the first n examples (full_data_hvp);
    the sharpness is its largest algebraic eigenvalue. Parameters are the seeded
    initialisation, or a --checkpoint of the same model. The numbers come from
    hessian_lab.studies.measure.

    Examples:

    ```
    hessian-lab sharpness --n 128 --width 32 -k 3
    hessian-lab sharpness --dataset teacher --loss mse --no-density --json
    hessian-lab sharpness --n 64 --out runs/sharp
    hessian-lab sharpness --problem hessian_lab.problem:example_mlp --arg width=16 -k 2
    hessian-lab sharpness --problem my_problem.py:make --data mnist:data/mnist --n 1000
    hessian-lab sharpness --problem my_resnet.py:make --n 256 --mode eval
    hessian-lab sharpness --problem my_cnn.py:make --n 1000 --convs matmul
    ```
    """
    with errors():
        options = _options(
            dataset=dataset.value, problem=problem, data=data, problem_args=tuple(problem_args or ()),
            n=n, in_dim=in_dim, depth=depth, width=width,
            activation=activation, param=param, loss=loss.value, normalization=normalization,
            seed=seed, checkpoint=None if checkpoint is None else str(checkpoint), k=k,
            num_iters=num_iters, trace_matvecs=trace_matvecs, trace_method=trace_method.value,
            density=density, density_iters=density_iters, density_probes=density_probes,
            chunk_size=chunk_size, mode=mode.value, x64=x64, convs=convs.value,
        )  # fmt: skip
        if out is not None:
            stored = sweep.normalize(dataclasses.asdict(options))
            sweep.check_run_dir(out, measure.KIND, stored)
            rundir.check_writable(out)  # before the work, whose results would be lost
        note_test_split(quiet, options.data, "--data")
        with progress_bars(quiet or json_, "sharpness") as bars:
            try:
                m = measure.measure(options, progress=bars.steps)
            except FloatingPointError as e:  # NaN/inf products: the numbers failed (exit 1)
                raise sweep.StudyError(str(e)) from e
            except ValueError as e:  # raised before any work: an option the model cannot use
                raise sweep.SweepError(_as_option(str(e))) from e
        if json_:
            typer.echo(json.dumps({**m.summary, "eigenvalues": m.arrays["eigenvalues"].tolist()}))
        else:
            eigs = ", ".join(f"{v:.6g}" for v in m.arrays["eigenvalues"])
            say(quiet, f"top eigenvalues: {eigs}")
            say(quiet, f"trace: {m.summary['trace']:.6g} +- {m.summary['trace_stderr']:.2g}")
            say(quiet, f"loss: {m.summary['loss']:.6g}  params: {m.summary['num_params']}  "
                        f"matvecs: {m.summary['num_matvecs']}")  # fmt: skip
        if out is None:
            return
        measure.save(m, out)
        say(quiet or json_, f"{out}: sharpness saved")
        if not no_report:
            path = write_report(out)
            if not json_:
                say(quiet, f"report: {path}")
