"""The hessian-lab command line, driven through typer's CliRunner and (for SIGKILL) a subprocess."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_study
import numpy as np
import pytest
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.io import load_run
from hessian_lab.studies import registry, sweep

TESTS = Path(__file__).parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    monkeypatch.delenv("FAKE_STUDY_SLEEP", raising=False)
    with fake_study.registered("fake") as module:
        yield module


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, code=2, match=""):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert match in err, err


def _snapshot(folder):
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns) for p in Path(folder).rglob("*") if p.is_file()
    }


def _arrays(run_dir):
    return load_run(run_dir)[1]


def _assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["study"],
        ["study", "list"],
        ["study", "show"],
        ["study", "run"],
        ["merge"],
        ["phase-diagram"],
        ["report"],
        ["sharpness"],
    ],
)
def test_every_help_works(command):
    result = cli(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: hessian-lab" in result.output and "Examples" in result.output


def test_no_arguments_shows_help():
    for args in ([], ["study"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert "Usage: hessian-lab" in result.output and "Examples" in result.output


def test_version():
    from hessian_lab import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.stdout == f"hessian-lab {__version__}\n"


def test_study_list_and_show():
    result = cli("study", "list")
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "fake" in names and names == [n for n in registry.names()]
    assert "fake_variant" not in names
    everything = cli("study", "list", "--all").stdout
    assert "warmup" in everything and ("unavailable" in everything or "warmup" in names)
    shown = cli("study", "show", "fake", "--preset", "tiny")
    assert shown.exit_code == 0
    assert "lrs" in shown.stdout and "tuple[float, ...]" in shown.stdout
    assert "sweep points (tiny): 4" in shown.stdout and "phase-diagram axes" not in shown.stdout
    with fake_study.registered("axes", fake_study.variant(PHASE_AXES=("lrs", "num_seeds"))):
        shown = cli("study", "show", "axes").stdout
    assert "phase-diagram axes: --x lrs=V1,V2,...  --y num_seeds=V1,V2,..." in shown


def test_every_preset_a_study_defines_is_a_preset_option_and_documented():
    from hessian_lab.studies import edge_of_stability as eos

    found = sweep.presets(eos)
    assert list(found)[:2] == ["tiny", "default"] and found["cnn_bn_mnist"] is eos.CNN_BN_MNIST
    assert "tiny_mlp" not in sweep.presets(registry.get("catapult"))  # a dict, not a Config
    shown = cli("study", "show", "edge_of_stability", "--preset", "cnn_mnist")
    assert shown.exit_code == 0, shown.output
    assert "presets: tiny, default, tiny_cnn, cnn_mnist, cnn_bn_mnist" in shown.stdout
    row = next(line.split() for line in shown.stdout.splitlines() if "downsample" in line)
    assert row[:3] == ["downsample", "int", str(eos.CNN_MNIST.downsample)] != [
        "downsample", "int", str(eos.DEFAULT.downsample)]  # fmt: skip
    _assert_one_line_error(cli("study", "show", "fake", "--preset", "huge"), 2,
                           "--preset: unknown preset 'huge' for fake; choose from tiny, default")  # fmt: skip
    text = (TESTS.parent / "docs" / "cli.md").read_text()
    for name in registry.names():
        if name == "fake":
            continue
        extra = [p for p in sweep.presets(registry.get(name)) if p not in ("tiny", "default")]
        assert all(f"`{p}`" in text for p in extra), (name, extra)


def _counting_run_point(config, point, *, progress=None):
    for step in range(config.steps):
        if progress is not None:
            progress(step + 1, config.steps)
    return fake_study.run_point(config, point)


def test_progress_shows_points_and_the_steps_of_each_point(tmp_path):
    with fake_study.registered("steps", fake_study.variant(run_point=_counting_run_point)):
        result = cli("study", "run", "steps", "--preset", "tiny", "--out", tmp_path / "r",
                     "--no-report")  # fmt: skip
    assert result.exit_code == 0, result.output
    bars = result.stderr.splitlines()
    assert bars[0].startswith("steps: points") and "4/4" in bars[0] and "ETA" in bars[0]
    assert bars[1].startswith("steps: steps of point 4") and "8/8" in bars[1]


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = cli("study", "run", "fake", "--preset", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    assert "report.html" in result.stdout
    for name in ("config.json", "arrays.npz", "summary.json", "study.json", "report.html"):
        assert (out / name).is_file(), name
    pngs = sorted((out / "figures").glob("*.png"))
    assert len(pngs) == 2 and len(list((out / "figures").glob("*.svg"))) == 2
    page = (out / "report.html").read_text()
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
        assert base64.b64encode(data).decode() in page
    expected = fake_study.run(fake_study.TINY)
    np.testing.assert_array_equal(_arrays(out)["losses"], expected.losses)
    # a rerun of a complete run recomputes nothing and exits 0
    before = (out / "arrays.npz").stat().st_mtime_ns
    again = cli("study", "run", "fake", "--preset", "tiny", "--out", out, "--quiet", "--no-report")
    assert again.exit_code == 0 and again.stdout == ""
    assert (out / "arrays.npz").stat().st_mtime_ns == before


def test_set_and_config_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"lrs": [0.5, 0.25], "mode": "grow"}))
    result = cli("study", "run", "fake", "--preset", "tiny", "--config", cfg, "--set",
                 "num_seeds=1", "-s", "log_y=true", "-s", "width=none", "--out", tmp_path / "r",
                 "-q", "--no-report")  # fmt: skip
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert stored["lrs"] == [0.5, 0.25] and stored["mode"] == "grow"
    assert stored["num_seeds"] == 1 and stored["log_y"] is True and stored["width"] is None
    assert stored["steps"] == fake_study.TINY.steps
    assert not (tmp_path / "r" / "report.html").exists()
    # a run's own config.json reproduces it
    again = cli("study", "run", "fake", "--config", tmp_path / "r" / "config.json",
                "--out", tmp_path / "r2", "-q", "--no-report")  # fmt: skip
    assert again.exit_code == 0
    _assert_same_arrays(_arrays(tmp_path / "r"), _arrays(tmp_path / "r2"))


def test_set_order_does_not_matter_for_cross_field_checks(tmp_path):
    # num_seeds <= steps: raising both past TINY's steps (8) works whichever comes first
    stored = []
    for i, sets in enumerate((["num_seeds=10", "steps=12"], ["steps=12", "num_seeds=10"])):
        args = [a for s in sets for a in ("--set", s)]
        result = cli("study", "run", "fake", "--preset", "tiny", *args, "--out",
                     tmp_path / f"r{i}", "-q", "--no-report")  # fmt: skip
        assert result.exit_code == 0, result.output
        stored.append(json.loads((tmp_path / f"r{i}" / "config.json").read_text())["config"])
    assert stored[0] == stored[1] and stored[0]["num_seeds"] == 10 and stored[0]["steps"] == 12
    # a value from the --config file counts too, and the error names the option that set it
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 12}))
    ok = cli("study", "run", "fake", "--preset", "tiny", "--set", "num_seeds=10", "--config",
             cfg, "--out", tmp_path / "r2", "-q", "--no-report")  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = cli("study", "run", "fake", "--preset", "tiny", "--set", "num_seeds=10", "--set",
              "scale=2", "--out", tmp_path / "bad", "-q")  # fmt: skip
    _assert_one_line_error(bad, 2, "error: --set num_seeds=10: num_seeds: must be at most steps")
    assert not (tmp_path / "bad").exists()


@pytest.fixture
def existing(tmp_path):
    """A complete run, a corrupted run and a plain file, to check errors overwrite nothing."""
    for name in ("run", "corrupt"):
        cli("study", "run", "fake", "--preset", "tiny", "--out", tmp_path / name, "-q",
            "--no-report")  # fmt: skip
    (tmp_path / "corrupt" / "arrays.npz").write_bytes(b"\x00garbage")
    (tmp_path / "afile").write_text("keep me")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["study", "run", "nope", "--out", "{d}/run"], "unknown study 'nope'"),
        (["study", "run", "fake", "--preset", "tiny", "--set", "foo=1", "--out", "{d}/run"],
         "unknown config key 'foo'"),
        (["study", "run", "fake", "--preset", "tiny", "--set", "scale=30", "--out", "{d}/run"],
         "--set scale=30: scale: must be in (0, 10]"),
        (["study", "run", "fake", "--preset", "tiny", "--set", "lrs=0.1,x", "--out", "{d}/run"],
         "--set lrs=0.1,x: lrs[1]: must be a valid number"),
        (["study", "run", "fake", "--preset", "tiny", "--set", "scale=2", "--out", "{d}/run"],
         "different config (scale: 1.0 != 2.0)"),
        (["study", "run", "fake", "--preset", "tiny", "--out", "{d}/afile"],
         "exists and is not a directory"),
        (["study", "run", "fake", "--preset", "tiny", "--out", "{d}/corrupt"],
         "cannot read"),
        (["report", "{d}/corrupt"], "cannot read"),
        (["study", "run", "fake", "--preset", "tiny", "--shard", "4/3", "--out", "{d}/run"],
         "--shard: expected i/n with 0 <= i < n, got '4/3'"),
        (["study", "run", "fake", "--preset", "tiny", "--config", "{d}/afile", "--out", "{d}/x"],
         "cannot read"),
        (["merge", "{d}/run", "--out", "{d}/afile"], "exists and is not a directory"),
        (["study", "run", "fake", "--preset", "huge", "--out", "{d}/run"], "--preset"),
        (["study", "run", "fake", "--bogus", "--out", "{d}/run"], "No such option: --bogus"),
    ],
)  # fmt: skip
def test_bad_input_one_line_error_nothing_overwritten(existing, args, match):
    before = _snapshot(existing)
    result = cli(*(a.format(d=existing) for a in args))
    _assert_one_line_error(result, 2, match)
    assert _snapshot(existing) == before
    assert not (existing / "x").exists()


def test_runtime_failure_exits_1(tmp_path):
    def run_point(config, point):
        raise FloatingPointError("loss is nan")

    with fake_study.registered("bad", fake_study.variant(run_point=run_point)):
        result = cli("study", "run", "bad", "--preset", "tiny", "--out", tmp_path / "r")
    _assert_one_line_error(result, 1, "bad.run_point failed: FloatingPointError: loss is nan")


def test_shards_then_merge_equal_unsharded(tmp_path):
    common = ["--quiet", "--no-report"]
    assert cli("study", "run", "fake", "--out", tmp_path / "full", *common).exit_code == 0
    for i in range(3):
        result = cli("study", "run", "fake", "--shard", f"{i}/3", "--out", tmp_path / f"s{i}")
        assert result.exit_code == 0 and "merge" in result.stdout
        assert not (tmp_path / f"s{i}" / "config.json").exists()
    shards = [tmp_path / f"s{i}" for i in range(3)]
    result = cli("merge", *shards, "--out", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    _assert_same_arrays(_arrays(tmp_path / "merged"), _arrays(tmp_path / "full"))
    assert (tmp_path / "merged" / "report.html").is_file()
    result = cli("merge", *shards[:2], "--out", tmp_path / "m2")
    _assert_one_line_error(result, 2, "points missing")
    assert not (tmp_path / "m2").exists()


def test_phase_diagram_axes_are_named_fields_checked_before_any_work(tmp_path):
    axes = fake_study.variant(PHASE_AXES=("lrs", "num_seeds"))
    with fake_study.registered("early_phase_diagram", axes):
        result = cli("phase-diagram", "early", "--preset", "tiny", "--x", "lrs=0.2,0.4",
                     "--y", "num_seeds=1", "--out", tmp_path / "pd", "-q", "--no-report")  # fmt: skip
        assert result.exit_code == 0, result.output
        stored = json.loads((tmp_path / "pd" / "config.json").read_text())["config"]
        assert stored["lrs"] == [0.2, 0.4] and stored["num_seeds"] == 1
        for args, match in [
            (["--x", "0.2,0.4"], "--x: name the field, as in --x lrs=0.2,0.4"),
            (["--y", "lrs=1,2"], "--y: the vertical axis of early_phase_diagram is num_seeds"),
            (["--y", "num_seeds=1,2"], "--y num_seeds=1,2: num_seeds: must be a valid integer"),
            (["--x", "lrs=-1"], "--x lrs=-1: lrs: must be non-empty and positive"),
        ]:
            result = cli("phase-diagram", "early", *args, "--out", tmp_path / "bad")
            _assert_one_line_error(result, 2, match)
    assert not (tmp_path / "bad").exists()
    with fake_study.registered("uv_model"):
        _assert_one_line_error(
            cli("phase-diagram", "uv", "--x", "lrs=0.3", "--out", tmp_path / "bad"),
            2, "--x: uv_model has no axis fields; set its grid with --set",
        )  # fmt: skip


def test_phase_diagram_help_names_the_studies_axes():
    from hessian_lab.studies import early_phase_diagram

    x, y = early_phase_diagram.PHASE_AXES
    text = " ".join(cli("phase-diagram", "--help").output.split())
    assert f"--x {x}=V1,V2,..." in text and f"--y {y}=V1,V2,..." in text
    assert f"early: {x}" in text and f"early: {y}" in text


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        registry.ENV_VAR: "fake=fake_study",
        "FAKE_STUDY_SLEEP": "0.25",
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [sys.executable, "-m", "hessian_lab.cli", "study", "run", "fake", "--out", str(out),
           "--quiet", "--no-report"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while len(list((out / "points").glob("*.json"))) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the sweep did not start"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    points = out / "points"
    finished = {p.stem for p in points.glob("*.json")}
    assert 3 <= len(finished) < 12 and not (out / "config.json").exists()
    assert finished <= {p.stem for p in points.glob("*.npz")}  # every mark has its arrays
    before = _snapshot(points)

    result = cli("study", "run", "fake", "--out", out, "--quiet", "--no-report")
    assert result.exit_code == 0, result.output
    assert (
        cli("study", "run", "fake", "--out", tmp_path / "ref", "-q", "--no-report").exit_code == 0
    )
    _assert_same_arrays(_arrays(out), _arrays(tmp_path / "ref"))
    for path, (data, mtime) in before.items():  # finished points were kept, not redone
        if path.suffix == ".json":
            assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    names = sorted(p.name for p in points.iterdir())
    assert names == sorted([f"{i}.npz" for i in range(12)] + [f"{i}.json" for i in range(12)])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--n", "0"], "--n: must be an int >= 1, got 0"),
        (["--in-dim", "0", "--dataset", "teacher"], "--in-dim: must be an int >= 1"),
        (["--activation", "sigmoidal"], "--activation: must be one of relu"),
        (["--dataset", "teacher", "--loss", "xent"], "--loss: must be mse for the teacher"),
        (["--checkpoint", "no/such/file.npz"], "--checkpoint: must be an existing file"),
    ],
)
def test_sharpness_rejects_bad_options_before_any_work(tmp_path, args, match):
    _assert_one_line_error(cli("sharpness", *args, "--out", tmp_path / "s"), 2, match)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # about 10 s of XLA compilation on 2 cores
def test_sharpness_matches_the_dense_hessian(tmp_path):
    import jax

    from hessian_lab import data, losses, models, testing, trainer

    net = models.mlp(3, 1, depth=1, width=4)
    params = net.init(jax.random.key(7))
    trainer.save_checkpoint(tmp_path / "params.npz", params)
    ds = data.teacher(0, 12, 3, 1)  # what --dataset teacher --seed 0 --n 12 --in-dim 3 uses
    loss_fn = losses.make_loss_fn(net.apply, "mse")
    dense = np.linalg.eigvalsh(np.asarray(testing.dense_hessian(loss_fn, params, (ds.x, ds.y))))
    result = cli("sharpness", "--dataset", "teacher", "--n", 12, "--in-dim", 3, "--depth", 1,
                 "--width", 4, "--checkpoint", tmp_path / "params.npz", "-k", 2,
                 "--num-iters", 21, "--trace-method", "hutchpp", "--trace-matvecs", 66,
                 "--density-iters", 8, "--density-probes", 1, "--json",
                 "--out", tmp_path / "s")  # fmt: skip
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    np.testing.assert_allclose(numbers["eigenvalues"], dense[::-1][:2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(numbers["trace"], dense.sum(), rtol=1e-4, atol=1e-6)
    assert numbers["num_params"] == dense.shape[0] == 21
    png = (tmp_path / "s" / "figures" / "spectral_density.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert base64.b64encode(png).decode() in (tmp_path / "s" / "report.html").read_text()
    _assert_one_line_error(
        cli("sharpness", "--dataset", "teacher", "--loss", "xent"), 2, "needs class labels"
    )
    _assert_one_line_error(
        cli("sharpness", "--dataset", "teacher", "--in-dim", 3, "--depth", 2, "--width", 4,
            "--checkpoint", tmp_path / "params.npz"),
        2, "--checkpoint: cannot use",
    )  # fmt: skip
