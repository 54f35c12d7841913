"""HTML reports: figures saved as PNG and SVG, embedded as base64, tables escaped."""

import base64
import re

import fake_study
import pytest

from hessian_lab.io import CorruptRunError, save_run
from hessian_lab.studies import report, sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fake():
    with fake_study.registered("fake") as module:
        yield module


def test_report_embeds_every_figure(tmp_path):
    config = sweep.with_overrides(fake_study.TINY, ["tag=<script>alert(1)</script>"])
    out = sweep.execute("fake", config, tmp_path / "r")
    path = report.write_report(tmp_path / "r", results=out.results)
    assert path == tmp_path / "r" / "report.html"
    page = path.read_text()
    embedded = set(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page))
    for name in ("loss_curves", "sharpness_vs_lr"):  # names made file-safe
        png = (tmp_path / "r" / "figures" / f"{name}.png").read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 1000
        assert base64.b64encode(png).decode() in embedded
        svg = (tmp_path / "r" / "figures" / f"{name}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert len(embedded) == 2
    # tables: summary and config values; user text escaped; nothing fetched from elsewhere
    assert "final_loss_min" in page and "num_seeds" in page and "hessian_lab" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)


def test_report_loads_results_when_not_given(tmp_path):
    sweep.execute("fake", fake_study.TINY, tmp_path / "r")
    page = report.write_report(tmp_path / "r").read_text()
    assert page.count("data:image/png;base64,") == 2


def test_generic_report_for_unknown_kind(tmp_path):
    save_run(tmp_path / "s", config={"k": 3}, arrays={"eigs": [3.0, 2.0]},
             summary={"top": 3.0}, kind="sharpness")  # fmt: skip
    (tmp_path / "s" / "figures").mkdir()
    png = PNG_SIGNATURE + b"fake image body"
    (tmp_path / "s" / "figures" / "density.png").write_bytes(png)
    page = report.write_report(tmp_path / "s").read_text()
    assert base64.b64encode(png).decode() in page
    assert "eigs" in page and "(2,) float64" in page and "top" in page


def test_report_errors_leave_the_directory_alone(tmp_path):
    with pytest.raises(sweep.SweepError, match=r"holds no config\.json"):
        report.write_report(tmp_path)
    sweep.execute("fake", fake_study.TINY, tmp_path / "r")
    (tmp_path / "r" / "arrays.npz").write_bytes(b"corrupted")
    with pytest.raises(CorruptRunError, match=r"arrays\.npz"):
        report.write_report(tmp_path / "r")
    assert not (tmp_path / "r" / "report.html").exists()
    assert not (tmp_path / "r" / "figures").exists()
