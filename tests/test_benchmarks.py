"""The benchmark scripts run end to end at tiny sizes and print every row of their summaries.

They are scripts, not tests: their numbers are never asserted. This only keeps them from
rotting (an API change that breaks a benchmark fails here, not on the day someone measures).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_bench_core_prints_every_target(capsys):
    tiny = "--n 64 --chunk-size 16 --in-dim 12 --width 8 --depth 2 --out-dim 3 --starts 2"
    # one budget, equal to --num-iters: the accuracy rows reuse the timed Lanczos compilation
    tiny += " --num-iters 6 --ref-iters 24 --budgets 6 --memory-factor 2 --repeats 1"
    _load("bench_core").main([*tiny.split(), "--compile-repeats", "1"])
    out = capsys.readouterr().out
    for row in (
        "HVP / gradient (chunk_size=16)",
        "6-step Lanczos / (6 x HVP)",
        "compile (CPU time): Lanczos / HVP",
        "compile (wall time): Lanczos / HVP",
        "top_eigs rel. error at 6 matvecs (median)",
        "HVP temp memory n=128 / n=64",
        "scipy eigsh",
    ):
        assert row in out, row


def test_bench_callbacks_prints_ratios_floors_and_subset_error(capsys):
    pytest.importorskip("sklearn")
    # 20 steps: two measurements at every=10; 300 examples, width 16: the same programs, smaller
    _load("bench_callbacks").main(num_steps=20, rounds=1, subset=100, n=300, width=16)
    out = capsys.readouterr().out
    assert out.count("ratio") == 7 and out.count("floor") == 5
    assert "critical_sharpness(every=1)" in out and "goal >= 5x" in out
    assert "sharpness(subset=100, every=10, num_iters=20)" in out
    assert "subset sharpness vs full-set sharpness over the 2 measurements" in out


def test_bench_models_prints_every_ratio_and_the_logits_count(capsys):
    # cnn (every case, the loops included) and vocab (the transformer's builder at other
    # sizes): between them every code path of the script; `transformer` only recombines them
    tiny = "--problems cnn vocab --repeats 1 --loop 2 --n 8 --image 8 --width 4 --depth 1"
    tiny += " --heads 2 --big-vocab 64 --big-batch 2"
    _load("bench_models").main([*tiny.split(), "--big-context", "4", "--big-d-model", "8"])
    out = capsys.readouterr().out
    for row in (
        "cnn: hvp / gradient, time",
        "cnn: ggn x2 in a loop / gradient, time",
        "vocab: ggn, temporaries in logits arrays",
        "vocab: ggn - grad, temporaries in logits arrays",
    ):
        assert row in out, row
