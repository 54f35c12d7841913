"""The sweep engine and the study registry, tested against the fake study (tests/fake_study.py)."""

import json
import sys

import fake_study
import numpy as np
import pytest

from hessian_lab.io import CorruptRunError, load_run
from hessian_lab.studies import registry, sweep

TINY = fake_study.TINY


@pytest.fixture(autouse=True)
def fake():
    with fake_study.registered("fake") as module:
        yield module


def _arrays(run_dir):
    return load_run(run_dir)[1]


def _assert_same_arrays(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def _snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


# --- registry ---------------------------------------------------------------------------------


def test_registry_lists_only_importable_studies():
    planned = registry.planned()
    for name in ("uv_model", "edge_of_stability", "momentum", "adaptive_eos", "stochastic_eos",
                 "catapult", "early_phase_diagram", "warmup", "fake"):  # fmt: skip
        assert name in planned
    status = registry.available()
    assert status["fake"] is None
    assert registry.names() == sorted(n for n, reason in status.items() if reason is None)
    assert "fake" in registry.names()
    assert registry.get("fake") is fake_study


def test_registry_errors(tmp_path, monkeypatch):
    with pytest.raises(
        registry.UnknownStudyError, match=r"unknown study 'nope'; available: .*fake"
    ):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("fake", "x.y")
    registry.register("missing_study", "no_such_module_anywhere")
    try:
        assert "missing_study" in registry.planned()
        assert "missing_study" not in registry.names()
        with pytest.raises(registry.UnknownStudyError, match="not available"):
            registry.get("missing_study")
    finally:
        registry.unregister("missing_study")
    (tmp_path / "broken_study_mod.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(registry.ENV_VAR, "broken=broken_study_mod")
    with pytest.raises(registry.StudyImportError, match="boom"):
        registry.get("broken")
    assert "broken" not in registry.names()
    monkeypatch.setenv(registry.ENV_VAR, "oops")
    with pytest.raises(registry.UnknownStudyError, match=r"name=package\.module"):
        registry.planned()
    monkeypatch.delitem(sys.modules, "broken_study_mod", raising=False)


# --- configs ----------------------------------------------------------------------------------


def test_overrides_parse_by_field_type():
    c = sweep.with_overrides(
        TINY,
        ["lrs=0.5, 1", "num_seeds=3", "scale=2.5", "mode=grow", "log_y=yes", "tag=a=b",
         "width=64", "steps=10"],
    )  # fmt: skip
    assert c.lrs == (0.5, 1.0) and isinstance(c.lrs, tuple)
    assert (c.num_seeds, c.scale, c.mode, c.log_y, c.tag, c.width, c.steps) == (
        3, 2.5, "grow", True, "a=b", 64, 10,
    )  # fmt: skip
    assert sweep.with_overrides(c, ["width=none", "log_y=0"]).width is None
    assert sweep.with_overrides(TINY, {"lrs": [0.2], "scale": 2}).lrs == (0.2,)
    assert isinstance(sweep.with_overrides(TINY, {"scale": 2}).scale, float)
    assert sweep.with_overrides(TINY, {"steps": 10.0}).steps == 10  # JSON numbers, lax
    assert sweep.with_overrides(TINY, {"width": None}).width is None
    # a stored config reads back to an equal Config
    assert sweep.config_from_dict(fake_study, sweep.config_to_dict(c)) == c


@pytest.mark.parametrize(
    ("item", "match"),
    [
        ("foo=1", "unknown config key 'foo'.*allowed: lrs, num_seeds, steps, scale"),
        ("num_seeds=1.5", "^num_seeds: must be a valid integer, .*, got '1.5'$"),
        ("log_y=maybe", "^log_y: must be a valid boolean, .*, got 'maybe'$"),
        ("mode=sideways", "^mode: must be 'decay' or 'grow', got 'sideways'$"),
        ("scale=abc", "^scale: must be a valid number, .*, got 'abc'$"),
        ("lrs=0.1,abc", r"^lrs\[1\]: must be a valid number, .*, got 'abc'$"),
        ("width=wide", "^width: must be a valid integer"),
        ("scale=30", r"^scale: must be in \(0, 10\]"),  # the Config's own validation
        ("noequals", "expected key=value"),
    ],
)
def test_overrides_reject_bad_input(item, match):
    with pytest.raises(sweep.SweepError, match=match):
        sweep.with_overrides(TINY, [item])


def test_json_overrides_reject_bad_types():
    with pytest.raises(sweep.SweepError, match=r"^steps: must be a valid integer, got a number"):
        sweep.with_overrides(TINY, {"steps": 2.5})
    with pytest.raises(sweep.SweepError, match=r"^tag: must be a valid string, got 5"):
        sweep.with_overrides(TINY, {"tag": 5})


@pytest.mark.parametrize("spec", ["4/3", "3/3", "-1/2", "a/b", "1", "1/0", "0/"])
def test_parse_shard_rejects(spec):
    with pytest.raises(sweep.SweepError, match="--shard"):
        sweep.parse_shard(spec)


def test_parse_shard():
    assert sweep.parse_shard(None) == sweep.Shard(0, 1)
    assert sweep.parse_shard("2/3") == sweep.Shard(2, 3)


# --- execute ----------------------------------------------------------------------------------


def test_execute_equals_run_and_records_everything(tmp_path):
    calls = []
    out = sweep.execute("fake", TINY, tmp_path / "r", progress=lambda d, t: calls.append((d, t)))
    assert out.complete and out.num_points == out.done == out.ran == 4
    expected = fake_study.run(TINY)
    _assert_same_arrays(_arrays(tmp_path / "r"), {"losses": expected.losses,
                                                   "sharpness": expected.sharpness})  # fmt: skip
    assert calls == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    manifest = json.loads((tmp_path / "r" / "study.json").read_text())
    assert manifest["study"] == "fake" and manifest["num_points"] == 4
    assert manifest["config"] == sweep.config_to_dict(TINY)
    assert {"hessian_lab", "jax", "python", "platform"} <= manifest["environment"].keys()
    names = sorted(p.name for p in (tmp_path / "r" / "points").iterdir())
    assert names == sorted([f"{i}.npz" for i in range(4)] + [f"{i}.json" for i in range(4)])
    meta = json.loads((tmp_path / "r" / "points" / "2.json").read_text())
    assert meta["point"] == fake_study.points(TINY)[2]
    # A complete run is loaded, not recomputed.
    again = sweep.execute("fake", TINY, tmp_path / "r")
    assert again.complete and again.ran == 0
    np.testing.assert_array_equal(again.results.losses, expected.losses)


def test_resume_skips_finished_points_and_ignores_partial_files(tmp_path):
    run_dir = tmp_path / "r"
    first = sweep.execute("fake", TINY, run_dir, shard=sweep.Shard(0, 2))
    assert not first.complete and first.done == 2 and first.results is None
    assert not (run_dir / "config.json").exists()
    before = _snapshot(run_dir / "points")
    # What a kill leaves behind: arrays without their .json mark, and a temporary file.
    (run_dir / "points" / "1.npz").write_bytes(b"partial garbage")
    (run_dir / "points" / ".3.npz.abc.tmp").write_bytes(b"partial")
    done = sweep.execute("fake", TINY, run_dir)
    assert done.complete and done.ran == 2
    for path, (data, mtime) in before.items():  # finished points were not rewritten
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    assert not list((run_dir / "points").glob(".*"))
    reference = sweep.execute("fake", TINY, tmp_path / "ref")
    _assert_same_arrays(_arrays(run_dir), _arrays(tmp_path / "ref"))
    assert reference.complete


def test_config_mismatch_is_an_error(tmp_path):
    sweep.execute("fake", TINY, tmp_path / "r", shard=sweep.Shard(0, 2))
    before = _snapshot(tmp_path / "r")
    other = sweep.with_overrides(TINY, ["scale=2"])
    with pytest.raises(sweep.SweepError, match=r"different config \(scale: 1.0 != 2.0\)"):
        sweep.execute("fake", other, tmp_path / "r")
    assert _snapshot(tmp_path / "r") == before


def test_bad_run_dirs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(sweep.SweepError, match="not a directory"):
        sweep.execute("fake", TINY, tmp_path / "file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(sweep.SweepError, match="not empty"):
        sweep.execute("fake", TINY, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["notes.txt"]


def test_corrupted_points_are_errors(tmp_path):
    run_dir = tmp_path / "r"
    sweep.execute("fake", TINY, run_dir, shard=sweep.Shard(0, 2))
    (run_dir / "points" / "2.npz").write_bytes(b"not a zip")
    with pytest.raises(CorruptRunError, match=r"2\.npz"):
        sweep.execute("fake", TINY, run_dir)
    (run_dir / "points" / "2.npz").unlink()
    (run_dir / "points" / "2.json").write_text("{not json")
    with pytest.raises(CorruptRunError, match=r"2\.json"):
        sweep.execute("fake", TINY, run_dir)
    (run_dir / "points" / "2.json").write_text(json.dumps({"index": 2, "point": {"lr": 9}}))
    with pytest.raises(sweep.SweepError, match="does not match point 2"):
        sweep.execute("fake", TINY, run_dir)


def test_study_without_points_runs_and_saves(tmp_path):
    plain = fake_study.variant(points=None, run_point=None, assemble=None)
    with fake_study.registered("plain", plain):
        points, steps = [], []
        out = sweep.execute("plain", TINY, tmp_path / "r", progress=lambda d, t: points.append(d),
                            steps=lambda d, t: steps.append(d))  # fmt: skip
        assert out.complete and out.num_points is None and steps == [1, 2, 3, 4] and not points
        assert not (tmp_path / "r" / "points").exists()
        assert (tmp_path / "r" / "config.json").exists()
        with pytest.raises(sweep.SweepError, match="has no sweep points"):
            sweep.merge([tmp_path / "r"], tmp_path / "m")


def test_step_progress_reaches_run_point_when_it_takes_progress(tmp_path):
    def counting(config, point, *, progress=None):
        for step in range(config.steps):
            progress(step + 1, config.steps)
        return fake_study.run_point(config, point)

    events = []
    with fake_study.registered("counting", fake_study.variant(run_point=counting)):
        sweep.execute("counting", TINY, tmp_path / "c", progress=lambda d, t: events.append(("p", d, t)),
                      steps=lambda d, t: events.append(("s", d, t)))  # fmt: skip
    one_point = [("s", i, TINY.steps) for i in range(1, TINY.steps + 1)]
    assert events == [("p", 0, 4)] + [e for p in range(1, 5) for e in [*one_point, ("p", p, 4)]]
    # a run_point without the keyword (the fake study's own) is called as before
    out = sweep.execute("fake", TINY, tmp_path / "f", steps=lambda d, t: events.append(d))
    assert out.complete


def test_study_failures_are_study_errors(tmp_path):
    def run_point(config, point):
        raise RuntimeError("diverged")

    with fake_study.registered("bad", fake_study.variant(run_point=run_point)):
        with pytest.raises(
            sweep.StudyError, match=r"bad\.run_point failed: RuntimeError: diverged"
        ):
            sweep.execute("bad", TINY, tmp_path / "r")
    with fake_study.registered("half", fake_study.variant(assemble=None)):
        with pytest.raises(sweep.StudyError, match="define all of points, run_point, assemble"):
            sweep.execute("half", TINY, tmp_path / "h")


# --- merge ------------------------------------------------------------------------------------


def test_three_shards_merged_equal_the_unsharded_sweep(tmp_path):
    config = fake_study.DEFAULT  # 12 points: shards of 4
    full = sweep.execute("fake", config, tmp_path / "full")
    shards = [tmp_path / f"s{i}" for i in range(3)]
    for i, d in enumerate(shards):
        part = sweep.execute("fake", config, d, shard=sweep.Shard(i, 3))
        assert not part.complete and part.done == 4
        assert sorted(int(p.stem) for p in (d / "points").glob("*.json")) == list(range(i, 12, 3))
    merged = sweep.merge(shards, tmp_path / "merged")
    assert merged.complete
    _assert_same_arrays(_arrays(tmp_path / "merged"), _arrays(tmp_path / "full"))
    assert load_run(tmp_path / "merged")[0] == load_run(tmp_path / "full")[0]
    np.testing.assert_array_equal(merged.results.losses, full.results.losses)
    manifest = json.loads((tmp_path / "merged" / "study.json").read_text())
    assert [m["dir"] for m in manifest["merged_from"]] == [str(d) for d in shards]
    # merging again into the same directory is harmless
    assert sweep.merge(shards, tmp_path / "merged").complete


def test_merge_errors_write_nothing(tmp_path):
    config = fake_study.DEFAULT
    for i in range(2):
        sweep.execute("fake", config, tmp_path / f"s{i}", shard=sweep.Shard(i, 3))
    with pytest.raises(sweep.SweepError, match=r"4 of 12 points missing \(2, 5, 8, 11\)"):
        sweep.merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    assert not (tmp_path / "m").exists()
    other = sweep.with_overrides(config, ["scale=2"])
    sweep.execute("fake", other, tmp_path / "o", shard=sweep.Shard(2, 3))
    with pytest.raises(sweep.SweepError, match="different config"):
        sweep.merge([tmp_path / "s0", tmp_path / "s1", tmp_path / "o"], tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(sweep.SweepError, match=r"holds no study\.json"):
        sweep.merge([tmp_path / "s0", tmp_path / "empty"], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_shards_sharing_one_directory_assemble_when_the_last_finishes(tmp_path):
    config = fake_study.DEFAULT
    for i in range(3):
        out = sweep.execute("fake", config, tmp_path / "shared", shard=sweep.Shard(i, 3))
        assert out.complete == (i == 2)
    reference = sweep.execute("fake", config, tmp_path / "ref")
    np.testing.assert_array_equal(out.results.losses, reference.results.losses)


# --- concurrent runs and leftovers ------------------------------------------------------------


def test_a_second_process_on_the_same_shard_is_refused_before_any_work(tmp_path):
    from hessian_lab.studies import rundir

    run_dir = tmp_path / "run"
    with rundir.locked(run_dir, "0/1"):  # stands for another process running this sweep
        with pytest.raises(sweep.SweepError, match=r"--out: another hessian-lab process"):
            sweep.execute("fake", TINY, run_dir)
        assert not (run_dir / "points").exists() and not (run_dir / "study.json").exists()
        # another shard of the same sweep may work in the same directory meanwhile
        out = sweep.execute("fake", TINY, run_dir, shard=sweep.parse_shard("1/2"))
        assert out.ran > 0
    assert sweep.execute("fake", TINY, run_dir).complete  # the lock is gone with its holder


def test_leftover_temporaries_in_the_run_root_are_removed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in (".config.json.x1.tmp", ".arrays.npz.x2.tmp"):
        (run_dir / name).write_bytes(b"killed mid-write")
    sweep.execute("fake", TINY, run_dir)
    assert not list(run_dir.glob("*.tmp")) and (run_dir / "config.json").is_file()


def test_an_unwritable_out_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(sweep.SweepError, match="--out: cannot write"):
        sweep.execute("fake", TINY, blocker / "run")


def test_a_corrected_rerun_replaces_a_run_that_failed_before_any_point(tmp_path):
    import dataclasses

    def broken(config, point):
        raise OSError("no such data file")

    run_dir = tmp_path / "run"
    registry.register("fake", fake_study.variant(run_point=broken), replace=True)
    with pytest.raises(sweep.StudyError):
        sweep.execute("fake", TINY, run_dir)
    registry.register("fake", fake_study, replace=True)
    assert (run_dir / "study.json").is_file()  # it had started
    fixed = dataclasses.replace(TINY, steps=TINY.steps + 1)
    assert sweep.execute("fake", fixed, run_dir).complete
    # ... but a run that finished points is never silently replaced
    with pytest.raises(sweep.SweepError, match=r"--out: .* different config"):
        sweep.execute("fake", TINY, run_dir)
