"""Every bad option, argument or input file is refused by the CLI before any work or write.

Table-driven through typer's CliRunner, in process: each case asserts the exit code (2: usage or
input), one ``error:`` line on stderr with no traceback, that the message names the option as
the user typed it (the flag, the ``--set`` key, or the path), and that ``--out`` (or the run
directory given) is exactly as it was: validation happens before anything is written, so every
case takes milliseconds. The families follow issue #18: values and types of ``--set``, config
files, data paths and estimator budgets, shards and axes, run directories (missing, damaged,
labelled as another study), and ``hessian-lab sharpness``'s options and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

from hessian_lab import models, trainer
from hessian_lab.cli.app import app
from hessian_lab.io import npz_bytes

EOS, EPD, CAT, SEOS = "edge_of_stability", "early_phase_diagram", "catapult", "stochastic_eos"
TINY = ["--preset", "tiny", "-q", "--no-report"]
SHARP = ["sharpness", "--dataset", "teacher", "--n", "16", "--in-dim", "3", "--width", "4"]
SHARP += ["--depth", "1", "-k", "1", "--num-iters", "4", "--trace-matvecs", "4", "--no-density"]
SHARP += ["-q"]  # 3 x 4 + 4 + 4 + 1 = 21 parameters


def run(study, *args):
    return ["study", "run", study, *TINY, *args]


def axes(*args):
    return ["phase-diagram", "early", *TINY, *args]


# (family, arguments, what the one-line message must contain). "{d}" is the fixture folder.
CASES = [
    # --set: syntax, unknown and repeated keys, types, ranges, non-finite numbers, big ints
    ("set", run(EOS, "--set", "nope=3"), "nope"),
    ("set", run(EOS, "--set", "noequals"), "--set"),
    ("set", run(EOS, "--set", "=3"), "--set"),
    ("set", run(EOS, "--set", "seed=1", "--set", "seed=2"), "seed"),
    ("set", run(EOS, "--set", "num_steps=abc"), "num_steps"),
    ("set", run(EOS, "--set", "num_steps=true"), "num_steps"),
    ("set", run(EOS, "--set", "num_steps=-3"), "num_steps"),
    ("set", run(EOS, "--set", "num_steps=2.5"), "num_steps"),
    ("set", run(EOS, "--set", "num_steps="), "num_steps"),
    ("set", run(EOS, "--set", "num_steps=1e30"), "num_steps"),
    ("set", run(EOS, "--set", "num_steps=99999999999999999999"), "num_steps"),
    # sizes: a depth that takes minutes to trace, widths whose parameters exceed the memory
    ("set", run(EOS, "--set", "depth=1000000"), "depth"),
    ("set", run(EPD, "--set", "depths=1,100000"), "depths"),
    ("set", run(EOS, "--set", "width=10000000"), "width"),
    ("set", run("adaptive_eos", "--set", "width=3000000"), "width"),
    ("sharpness", [*SHARP, "--width", "1000000000"], "--width"),
    ("sharpness", [*SHARP, "--depth", "5000"], "--depth"),
    ("set", run(EOS, "--set", "seed=-1"), "seed"),
    ("set", run(EOS, "--set", "seed=4294967296"), "seed"),  # jax.random.key would alias it to 0
    ("set", run(EOS, "--set", "seed=none"), "seed"),
    ("set", run(EOS, "--set", "lrs=-0.1"), "lrs"),
    ("set", run(EOS, "--set", "lrs=0.1,nan"), "lrs"),
    ("set", run(EOS, "--set", "lrs=1e400"), "lrs"),
    ("set", run(EOS, "--set", "lrs=0.1,,0.2"), "lrs"),
    ("set", run(EOS, "--set", "flow_step=nan"), "flow_step"),
    ("set", run(EOS, "--set", "flow_time=inf"), "flow_time"),
    ("set", run(EOS, "--set", "divergence_threshold=inf"), "divergence_threshold"),
    ("set", run(EOS, "--set", "activation=TANH"), "activation"),
    ("set", run(EOS, "--set", "cifar_path="), "cifar_path"),
    ("set", run(EPD, "--set", "log2_c_min=nan"), "log2_c_min"),
    ("set", run(EPD, "--set", "log2_c_max=inf"), "log2_c_max"),
    ("set", run(CAT, "--set", "uv_log2_c_min=nan"), "uv_log2_c_min"),
    ("set", run(CAT, "--set", "seeds=0,0"), "seeds"),
    ("set", run(CAT, "--set", "uv_widths=99999999999"), "uv_widths"),
    ("set", run("uv_model", "--set", "y=nan"), "y"),
    ("set", run("uv_model", "--set", "period_tol=nan"), "period_tol"),
    ("set", run("momentum", "--set", "momentum=nan"), "momentum"),
    ("set", run("adaptive_eos", "--set", "b1=nan"), "b1"),
    ("set", run("stochastic_eos", "--set", "grid_lo=nan"), "grid_lo"),
    ("set", run("warmup", "--set", "trainable_fraction=nan"), "trainable_fraction"),
    ("set", run("warmup", "--set", "seeds=-1"), "seeds"),
    # estimator budgets against the model's parameter count, and data paths (check_inputs)
    ("budget", run(EOS, "--set", "lanczos_iters=100000"), "lanczos_iters"),
    ("budget", run(EPD, "--set", "lanczos_iters=100000"), "lanczos_iters"),
    ("budget", run(CAT, "--set", "lambda0_iters=100000"), "lambda0_iters"),
    ("budget", run("adaptive_eos", "--set", "num_iters=100000"), "num_iters"),
    ("budget", run("warmup", "--set", "lanczos_iters=100000"), "lanczos_iters"),
    ("budget", run(SEOS, "--set", "num_iters=100000", "--set", "mlp_batch_sizes=4"), "num_iters"),
    ("path", run(EOS, "--set", "cifar_path={d}/missing"), "cifar_path"),
    ("path", run(EOS, "--set", "cifar_path={d}/empty_dir"), "cifar_path"),
    ("path", run(EOS, "--set", "cifar_path={d}/a_file"), "cifar_path"),
    # --config files: missing, a folder, garbage, truncated, empty, wrong shapes and types
    ("config", run(EOS, "--config", "{d}/missing.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/empty_dir"), "--config"),
    ("config", run(EOS, "--config", "{d}/garbage.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/truncated.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/empty.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/list.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/catapult_run.json"), "--config"),
    ("config", run(EOS, "--config", "{d}/unknown_key.json"), "nope"),
    ("config", run(EOS, "--config", "{d}/bool_int.json"), "num_steps"),
    ("config", run(EOS, "--config", "{d}/nan.json"), "flow_step"),
    # --shard
    ("shard", run(EPD, "--shard", "3/2"), "--shard"),
    ("shard", run(EPD, "--shard", "0/0"), "--shard"),
    ("shard", run(EPD, "--shard", "a/b"), "--shard"),
    ("shard", run(EPD, "--shard", "-1/2"), "--shard"),
    ("shard", run(EPD, "--shard", "1"), "--shard"),
    ("shard", run(EPD, "--shard", "0/99999999999999999999"), "--shard"),  # more than the points
    ("shard", run(EOS, "--shard", "0/2"), "--shard"),  # no sweep points
    # phase-diagram --x/--y
    ("axis", axes("--x", "16,32"), "--x"),
    ("axis", axes("--x", "depths=1"), "--x"),
    ("axis", axes("--x", "widths=a,b"), "--x"),
    ("axis", axes("--x", "widths=0"), "--x"),
    ("axis", axes("--y", "depths=2.5"), "--y"),
    ("axis", axes("--x", "widths=16", "--set", "widths=32"), "widths"),
    ("axis", ["phase-diagram", "uv", *TINY, "--x", "width=16"], "--x"),
    # --out and run directories: a file, unwritable, foreign, damaged, labelled as another study
    ("out", run(EOS, "--out", "{d}/a_file"), "--out"),
    ("out", run(EOS, "--out", "{d}/a_file/sub"), "--out"),
    ("out", run(EOS, "--out", "/proc/hessian-lab-nope"), "--out"),
    ("out", run(EOS, "--out", "{d}/not_a_run"), "--out"),
    ("out", run(EOS, "--out", "{d}/labelled_catapult"), "--out"),
    ("out", run(EOS, "--out", "{d}/garbage_manifest"), "--out"),
    ("rundir", ["report", "{d}/missing"], "missing"),
    ("rundir", ["report", "{d}/labelled_catapult"], "labelled_catapult"),
    ("rundir", ["report", "{d}/foreign_config"], "foreign_config"),
    ("rundir", ["report", "{d}/garbage_arrays"], "garbage_arrays"),
    ("rundir", ["report", "{d}/garbage_manifest"], "garbage_manifest"),
    ("rundir", ["merge", "{d}/missing", "--out", "{d}/merged"], "missing"),
    ("rundir", ["merge", "{d}/not_a_run", "--out", "{d}/merged"], "not_a_run"),
    # hessian-lab sharpness: budgets, sizes, seeds, checkpoints, --out
    ("sharpness", [*SHARP, "-k", "0"], "-k"),
    ("sharpness", [*SHARP, "-k", "22", "--num-iters", "22"], "-k"),
    ("sharpness", [*SHARP, "-k", "3", "--num-iters", "2"], "-k"),
    ("sharpness", [*SHARP, "--num-iters", "100000"], "--num-iters"),
    ("sharpness", [*SHARP, "--trace-matvecs", "0"], "--trace-matvecs"),
    ("sharpness", [*SHARP, "--trace-matvecs", "1"], "--trace-matvecs"),
    ("sharpness", [*SHARP, "--trace-matvecs", "5", "--trace-method", "hutchpp"], "--trace-matvecs"),
    ("sharpness", [*SHARP, "--density", "--density-iters", "100000"], "--density-iters"),
    ("sharpness", [*SHARP, "--density", "--density-probes", "0"], "--density-probes"),
    ("sharpness", [*SHARP, "--n", "abc"], "--n"),
    ("sharpness", [*SHARP, "--width", "0"], "--width"),
    ("sharpness", [*SHARP, "--seed", "-1"], "--seed"),
    ("sharpness", [*SHARP, "--seed", "99999999999999999999"], "--seed"),
    ("sharpness", [*SHARP, "--loss", "xent"], "--loss"),
    ("sharpness", [*SHARP, "--checkpoint", "{d}/missing.npz"], "--checkpoint"),
    ("sharpness", [*SHARP, "--checkpoint", "{d}/garbage.npz"], "--checkpoint"),
    ("sharpness", [*SHARP, "--checkpoint", "{d}/truncated.npz"], "--checkpoint"),
    ("sharpness", [*SHARP, "--checkpoint", "{d}/other_model.npz"], "--checkpoint"),
    ("sharpness", [*SHARP, "--out", "{d}/a_file"], "--out"),
    ("sharpness", [*SHARP, "--out", "/proc/hessian-lab-nope"], "--out"),
    ("sharpness", [*SHARP, "--out", "{d}/labelled_catapult"], "--out"),
]


def _write_run(folder: Path, kind: str, config: dict, arrays: bytes) -> None:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"kind": kind, "config": config}))
    (folder / "arrays.npz").write_bytes(arrays)
    (folder / "summary.json").write_text("{}")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    (d / "empty_dir").mkdir()
    (d / "a_file").write_text("x")
    (d / "not_a_run").mkdir()
    (d / "not_a_run" / "notes.txt").write_text("mine")
    texts = {
        "garbage.json": "\x00\xff not json",
        "truncated.json": '{"num_steps": 3',
        "empty.json": "",
        "list.json": "[1, 2]",
        "catapult_run.json": json.dumps({"study": CAT, "config": {"seeds": [0]}}),
        "unknown_key.json": '{"nope": 3}',
        "bool_int.json": '{"num_steps": true}',
        "nan.json": '{"flow_step": NaN}',
    }
    for name, text in texts.items():
        (d / name).write_text(text)
    arrays = npz_bytes({"x": np.zeros(3)})
    (d / "garbage.npz").write_bytes(b"garbage" * 40)
    (d / "truncated.npz").write_bytes(arrays[:100])
    other = models.mlp(3, 1, depth=1, width=5)  # the model of SHARP has width 4
    trainer.save_checkpoint(d / "other_model.npz", other.init(jax.random.key(0)))
    _write_run(d / "labelled_catapult", CAT, {"seeds": [0]}, arrays)
    _write_run(d / "foreign_config", EOS, {"seeds": [0], "uv_widths": [8]}, arrays)
    _write_run(d / "garbage_arrays", EOS, {}, b"\x80\x04 pickled?")
    _write_run(d / "garbage_manifest", EOS, {}, arrays)
    (d / "garbage_manifest" / "study.json").write_text("nope")
    return d


def _snapshot(path: Path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {str(p): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize(
    ("args", "names"), [c[1:] for c in CASES], ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_is_refused_before_any_work_or_write(inputs, tmp_path, args, names):
    args = [a.replace("{d}", str(inputs)) for a in args]
    if args[0] == "phase-diagram" or args[:2] == ["study", "run"]:
        if "--out" not in args:
            args += ["--out", str(tmp_path / "out")]
    out = Path(args[args.index("--out") + 1]) if "--out" in args else tmp_path / "out"
    before, fixtures = _snapshot(out), _snapshot(inputs)
    result = CliRunner().invoke(app, args)
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert names in err, err
    assert _snapshot(out) == before, f"{out} was written"
    assert _snapshot(inputs) == fixtures, "an input was written"


def test_the_families_are_all_covered():
    families = {c[0] for c in CASES}
    expected = {"set", "budget", "path", "config", "shard", "axis", "out", "rundir", "sharpness"}
    assert families == expected
    assert len(CASES) >= 60


def test_nan_products_during_the_measurement_are_a_runtime_failure(monkeypatch):
    # Not a usage error: the options were fine, the numbers failed (exit 1, one line).
    from hessian_lab import NonFiniteError
    from hessian_lab.studies import measure

    def nan_products(options, progress=None):
        raise NonFiniteError("matvec: produced NaN or inf (first at Lanczos product 3 of 4)")

    monkeypatch.setattr(measure, "measure", nan_products)
    r = CliRunner().invoke(app, SHARP)
    assert r.exit_code == 1, r.output
    assert "error: matvec: produced NaN or inf" in r.output and "Traceback" not in r.output
