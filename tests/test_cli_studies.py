"""Every built-in study, end to end through the CLI at its TINY preset: results, figures, report."""

import base64
import re

import pytest
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.studies import registry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_planned_study_is_available():
    assert sorted(registry.names()) == sorted(registry.planned())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(registry.planned()))
def test_tiny_run_writes_results_figures_and_report(name, tmp_path):
    out = tmp_path / name
    result = CliRunner().invoke(
        app, ["study", "run", name, "--preset", "tiny", "--out", str(out), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    for f in ("config.json", "arrays.npz", "summary.json", "report.html"):
        assert (out / f).is_file(), f
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs, "no figures written"
    for png in pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, png
    html = (out / "report.html").read_text()
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == len(pngs)
    assert all(base64.b64decode(e).startswith(PNG_SIGNATURE) for e in embedded)
