"""The study kit's contract (docs/dev/studies.md), as checks every study's tests call.

``check_static(module)`` costs nothing and runs for every registered study in
tests/test_study_contract.py. ``check_dynamic(module, results, tmp_path)`` needs the study's TINY
results, which each study's own test file already computes once (a module fixture), so it is
called from there: test_study_contract.py checks that every built-in study's test file does.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hessian_lab.studies import kit

REQUIRED = ("NAME", "PAPER", "DOCS", "Config", "TINY", "DEFAULT", "Results", "METRICS", "run")
REQUIRED += ("save", "load", "summary", "verdict", "figures")
ROOT = Path(__file__).resolve().parents[1]


def check_static(module) -> None:
    """Attributes, described Config fields, declared metrics, and a plots module that receives data."""
    missing = [a for a in REQUIRED if not hasattr(module, a)]
    assert not missing, f"{module.__name__} lacks {missing}"
    for preset in ("TINY", "DEFAULT"):
        assert isinstance(getattr(module, preset), module.Config), preset
    undescribed = [f for f, doc in kit.describe(module.Config).items() if not doc.strip()]
    assert not undescribed, f"{module.NAME}: Config fields without a description: {undescribed}"
    for name, m in module.METRICS.items():
        assert isinstance(m, kit.Metric) and m.description.strip(), name
    assert "progress" in inspect.signature(module.run).parameters
    if hasattr(module, "run_point"):
        assert "progress" in inspect.signature(module.run_point).parameters
    assert (ROOT / module.DOCS).is_file(), module.DOCS
    plots = _plots_module(module)
    if plots is not None:  # it receives data: it never imports a study module
        tree = ast.parse(Path(plots.__file__).read_text())
        imported = {
            a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
        }
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert module.NAME not in {i.rsplit(".", 1)[-1] for i in imported}, plots.__name__


def _plots_module(module):
    for name in (
        f"{module.__name__}_plots",
        f"{module.__name__.rsplit('.', 1)[0]}.{module.NAME}_plots",
    ):
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    return None


def _scalars(value) -> list:
    return list(value.values()) if isinstance(value, dict) else [value]


def check_dynamic(module, results, tmp_path: Path) -> None:
    """Save/load round trip, figures render, every summary metric declared, a verdict in words."""
    run_dir = tmp_path / f"{module.NAME}_contract"
    module.save(results, run_dir)
    back = module.load(run_dir)
    assert back.config == results.config and type(back.config) is type(results.config)
    for f in dataclasses.fields(back):
        if f.name != "config":
            a, b = np.asarray(getattr(results, f.name)), np.asarray(getattr(back, f.name))
            assert a.dtype == b.dtype and a.shape == b.shape, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)
    figs = module.figures(results)
    assert figs and all(isinstance(f, Figure) for f in figs.values())
    for fig in figs.values():
        fig.canvas.draw()  # renders: catches bad math text and empty axes errors
    s = module.summary(results)
    undeclared = sorted(set(s) - set(module.METRICS))
    assert not undeclared, f"{module.NAME}: summary metrics not in METRICS: {undeclared}"
    for key, value in s.items():
        for v in _scalars(value):
            assert isinstance(v, bool | int | float | str), (key, type(v))
            if isinstance(v, float):
                assert math.isfinite(v) or math.isnan(v), key
    sentences = module.verdict(results)
    assert sentences and all(isinstance(x, str) and x.strip() for x in sentences)
