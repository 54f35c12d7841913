"""HTML reports: figures saved as PNG and SVG, embedded as base64, tables escaped."""

import base64
import dataclasses
import html
import re

import fake_study
import pytest

from hessian_lab.io import CorruptRunError, save_run
from hessian_lab.studies import kit, report, sweep

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
    assert "(this study states no verdict" in page  # the fake study has none


@dataclasses.dataclass(frozen=True)
class DescribedConfig(fake_study.Config):
    lrs: tuple[float, ...] = kit.knob((0.1, 0.3), "learning rates eta, one run each")
    steps: int = kit.knob(8, "steps per run")


def _described_summary(results):
    labels = [f"GD eta={lr}" for lr in results.config.lrs]
    return {
        "final_loss": {lab: float(results.losses[i, :, -1].mean()) for i, lab in enumerate(labels)},
        "reached": {lab: bool(i) for i, lab in enumerate(labels)},
        "num_points": int(results.sharpness.size),
        "undeclared": 1.5,
    }


DESCRIBED = fake_study.variant(
    Config=DescribedConfig,
    TINY=DescribedConfig(**dataclasses.asdict(fake_study.TINY)),
    DEFAULT=DescribedConfig(),
    summary=_described_summary,
    METRICS={
        "final_loss": kit.Metric("training loss at the last step", "loss"),
        "reached": kit.Metric("the sharpness reached 2/eta"),
        "num_points": kit.Metric("sweep points run", "points"),
    },
    verdict=lambda r: [
        "median eta*lambda after reaching 2/eta: 2.04 (Cohen et al.: ~2) - reproduced"
    ],
    PAPER="Cohen et al. 2021, arXiv 2103.00065",
    DOCS="docs/studies/edge_of_stability.md",
)


def test_report_reads_top_down_verdict_figures_described_summary_config(tmp_path):
    with fake_study.registered("described", DESCRIBED):
        out = sweep.execute("described", DESCRIBED.TINY, tmp_path / "r")
        page = html.unescape(report.write_report(tmp_path / "r", results=out.results).read_text())
    text = re.sub(r"<[^>]+>", " ", page)
    order = [
        "Cohen et al. 2021, arXiv 2103.00065",  # the paper, then the verdict in words
        "median eta*lambda after reaching 2/eta: 2.04 (Cohen et al.: ~2) - reproduced",
        "data:image/png;base64,",  # figures
        "training loss at the last step",  # summary with descriptions
        "learning rates eta, one run each",  # config with descriptions
        "docs/studies/edge_of_stability.md",
    ]
    positions = [page.index(needle) for needle in order]
    assert positions == sorted(positions), positions
    # per-run metrics: one row per run label, one column per metric with its unit
    assert re.search(r"<th>run</th><th>final_loss \[loss\]</th><th>reached</th>", page)
    loss = out.results.losses[:, :, -1].mean(axis=1)
    for lab, value, reached in [("GD eta=0.1", loss[0], False), ("GD eta=0.3", loss[1], True)]:
        assert re.search(rf"<td>{lab}</td><td>{value:.6g}</td><td>{reached}</td>", page), lab
    # whole-study metrics: value, unit and meaning; an undeclared one is still shown
    assert " ".join("num_points 4 points sweep points run".split()) in " ".join(text.split())
    assert "undeclared" in page and "1.5" in page
    assert "steps per run" in page and "tag" in page  # an undescribed field keeps its row


def test_generic_report_for_unknown_kind(tmp_path):
    save_run(tmp_path / "s", config={"k": 3}, arrays={"eigs": [3.0, 2.0]},
             summary={"top": 3.0, "per_run": {"a": 1.25}}, kind="sharpness")  # fmt: skip
    (tmp_path / "s" / "figures").mkdir()
    png = PNG_SIGNATURE + b"fake image body"
    (tmp_path / "s" / "figures" / "density.png").write_bytes(png)
    page = report.write_report(tmp_path / "s").read_text()
    assert base64.b64encode(png).decode() in page
    assert "eigs" in page and "(2,) float64" in page and "top" in page
    assert "<td>a</td><td>1.25</td>" in page


def test_report_errors_leave_the_directory_alone(tmp_path):
    with pytest.raises(sweep.SweepError, match=r"holds no config\.json"):
        report.write_report(tmp_path)
    sweep.execute("fake", fake_study.TINY, tmp_path / "r")
    (tmp_path / "r" / "arrays.npz").write_bytes(b"corrupted")
    with pytest.raises(CorruptRunError, match=r"arrays\.npz"):
        report.write_report(tmp_path / "r")
    assert not (tmp_path / "r" / "report.html").exists()
    assert not (tmp_path / "r" / "figures").exists()
