"""The built-in studies through the CLI: all of them import, and the EoS report reads as promised.

Each study's own test file runs its TINY preset once and checks the study contract on it (results,
save/load, figures, described metrics, verdict: tests/study_contract.py); the CLI and report
machinery is tested on the cheap fake study (test_cli.py, test_report.py). What is left to check
here is one real study end to end through ``hessian-lab study run``: the first screen of the edge
of stability report states the verdict in words, with the paper's number beside ours.
"""

import base64
import html
import re

import pytest
from typer.testing import CliRunner

from hessian_lab.cli.app import app
from hessian_lab.studies import registry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_planned_study_is_available():
    assert sorted(registry.names()) == sorted(registry.planned())


@pytest.mark.slow  # one TINY edge-of-stability run: about 20 s on 2 cores
def test_eos_report_opens_with_the_verdict_beside_the_papers_number(tmp_path):
    out = tmp_path / "eos"
    # without the gradient-flow baseline (a quarter of the run; its figure is tested with the
    # study): the verdict lines this test reads are GD's
    args = ["--preset", "tiny", "--set", "flow_time=0", "--out", str(out), "-q"]
    result = CliRunner().invoke(app, ["study", "run", "edge_of_stability", *args])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    # The first screen: everything before the first figure, as a reader sees it (tags removed).
    first = " ".join(
        html.unescape(re.sub(r"<[^>]+>", " ", page.split("<h2>Figures</h2>")[0])).split()
    )
    assert "Reproduces: Cohen et al. 2021, arXiv 2103.00065" in first
    sentences = re.findall(
        r"GD eta=[\d.]+: [^(]*median eta\*lambda: ([\d.]+) \(Cohen et al\.: ~2[^)]*\) - (NOT )?reproduced",
        first,
    )
    assert len(sentences) == 2, first  # TINY runs two learning rates
    assert all(0.5 < float(ours) < 4 for ours, _ in sentences)
    pngs = sorted((out / "figures").glob("*.png"))
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert pngs and len(embedded) == len(pngs)
    assert all(base64.b64decode(e).startswith(PNG_SIGNATURE) for e in embedded)
