"""The documented user-loop examples run, at tiny sizes, and their sharpness is right."""

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _main(name):
    return runpy.run_path(str(EXAMPLES / name))["main"]


def test_plain_loop(capsys):
    top = _main("plain_loop.py")(num_steps=11, n=16)
    assert np.isfinite(top) and top > 0
    assert "sharpness" in capsys.readouterr().out


def test_flax_loop():
    pytest.importorskip("flax")
    lams = _main("flax_loop.py")(num_steps=11, n=16)
    assert np.isfinite(lams[0]) and np.isfinite(lams[10]) and np.isnan(lams[1])


def test_equinox_loop():
    pytest.importorskip("equinox")
    assert np.isfinite(_main("equinox_loop.py")(num_steps=11, n=16))
