"""One self-contained HTML page per run directory: verdict, figures, summary, config, environment.

:func:`write_report` loads a complete run directory with its study's ``load``, draws the study's
``figures``, saves each as ``<run_dir>/figures/<name>.png`` and ``.svg``, and writes
``<run_dir>/report.html`` with the PNGs embedded as base64 (the page needs no other file).

The page reads top to bottom as a reader asks: what was reproduced (the study's ``verdict``
sentences, our number beside the paper's), the figures, the summary (every metric with the unit
and description the study declares in ``METRICS``; per-run metrics as one row per run), the config
(each field with its description), the paper and the study's docs page, the arrays and the
environment. A run directory whose study is unknown (e.g. written by ``hessian-lab sharpness``)
still gets a report: its tables, and any PNGs already in ``figures/``.

Everything is computed before the first file is written, so a failure leaves the directory as it
was.

Example:
  >>> from hessian_lab.studies.report import write_report
  >>> write_report("runs/eos")  # doctest: +SKIP
  PosixPath('runs/eos/report.html')
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hessian_lab.io import CorruptRunError, atomic_write_bytes, read_json, read_npz

from . import registry, sweep
from .kit import describe

_REPO = Path(__file__).resolve().parents[1]

__all__ = ["figure_bytes", "render_html", "summary_html", "write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { font-family: ui-monospace, monospace; }
figure { display: inline-block; margin: 0.6em; } figcaption { color: #555; text-align: center; }
img { max-width: 100%; border: 1px solid #eee; }
ul.verdict { font-size: 1.05em; line-height: 1.5; } h3 { font-size: 1em; margin-bottom: 0.2em; }
"""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "figure"


def figure_bytes(fig: Any) -> tuple[bytes, bytes]:
    """Render a matplotlib figure to ``(png, svg)`` bytes (SVG without a date, so reruns match)."""
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    return png.getvalue(), svg.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) if len(value) <= 12 else f"[{len(value)} values]"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _rows(header: tuple[str, ...], rows: list[tuple[Any, ...]], numeric: int = -1) -> str:
    """An HTML table; column ``numeric`` is set in a monospace font."""
    if not rows:
        return "<p class='meta'>(none)</p>"
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_esc(_fmt(c))}</td>" if j == numeric else f"<td>{_esc(c)}</td>"
            for j, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _table(rows: Mapping[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    return _rows(header, list(rows.items()), numeric=1)


def _metric(metrics: Mapping[str, Any], name: str) -> tuple[str, str]:
    """(description, unit) of a summary metric; empty for one the study does not declare."""
    m = metrics.get(name)
    return (getattr(m, "description", ""), getattr(m, "unit", "")) if m is not None else ("", "")


def summary_html(summary: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The summary as a reader wants it: each metric with its unit and description.

    Scalar metrics are one row each; metrics whose value is ``{run label: value}`` share one table
    with a row per run and a column per metric, followed by what each column means.
    """
    scalars = [
        (name, value, _metric(metrics, name)[1], _metric(metrics, name)[0])
        for name, value in summary.items()
        if not isinstance(value, Mapping)
    ]
    per_run = [name for name, value in summary.items() if isinstance(value, Mapping)]
    parts = []
    if per_run:
        runs = list(dict.fromkeys(run for name in per_run for run in summary[name]))
        units = [_metric(metrics, name)[1] for name in per_run]
        header = (
            "run",
            *(n + (f" [{u}]" if u else "") for n, u in zip(per_run, units, strict=True)),
        )
        rows = [(run, *(_fmt(summary[name].get(run, "")) for name in per_run)) for run in runs]
        legend = [(name, _metric(metrics, name)[1], _metric(metrics, name)[0]) for name in per_run]
        parts += ["<h3>Per run</h3>", _rows(header, rows)]
        parts += ["<p class='meta'>Columns:</p>", _rows(("metric", "unit", "meaning"), legend)]
    if scalars or not per_run:
        parts += ["<h3>Whole study</h3>"] if per_run else []
        parts.append(_rows(("metric", "value", "unit", "meaning"), scalars, numeric=1))
    return "\n".join(parts)


def render_html(
    *,
    title: str,
    subtitle: str,
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
    arrays: Mapping[str, str],
    pngs: Mapping[str, bytes],
    verdict: list[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    config_docs: Mapping[str, str] | None = None,
    paper: str = "",
    docs: str = "",
) -> str:
    """Build the report page: verdict, figures, summary, config, docs, arrays, environment.

    ``pngs`` are embedded as base64 data URIs. ``verdict`` is None for a run whose study states
    none; ``metrics`` maps summary keys to ``Metric(description, unit)``; ``config_docs`` maps
    Config fields to their descriptions; ``docs`` is the study's repository-relative docs page.
    """
    figures = "".join(
        f"<figure><img alt='{_esc(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'><figcaption>{_esc(name)}</figcaption></figure>"
        for name, data in pngs.items()
    )
    if verdict:
        found = "".join(f"<li>{_esc(sentence)}</li>" for sentence in verdict)
        found = f"<ul class='verdict'>{found}</ul>"
    else:
        found = "<p class='meta'>(this study states no verdict; see the summary below)</p>"
    cfg_docs = config_docs or {}
    config_table = _rows(
        ("field", "value", "meaning"),
        [(k, v, cfg_docs.get(k, "")) for k, v in config.items()],
        numeric=1,
    )
    about = f"<p>Reproduces: {_esc(paper)}.</p>" if paper else ""
    docs_html = ""
    if docs:
        local = _REPO / docs  # present in a source checkout (editable install)
        name = f"<code>{_esc(docs)}</code>"
        if local.is_file():
            name = f"<a href='{_esc(local.as_uri())}'>{name}</a>"
        docs_html = (
            f"<h2>Documentation</h2><p>{name} in the hessian-lab repository: what the study "
            "measures, its conventions, and the paper's numbers.</p>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p class="meta">{_esc(subtitle)}</p>
{about}
<h2>What was found</h2>
{found}
<h2>Figures</h2>
{figures or "<p class='meta'>(no figures)</p>"}
<h2>Summary</h2>
{summary_html(summary, metrics or {})}
<h2>Config</h2>
{config_table}
{docs_html}
<h2>Arrays</h2>
{_table(arrays, ("array", "shape and dtype"))}
<h2>Environment</h2>
{_table(environment, ("", ""))}
</body></html>
"""


def _config_docs(config_cls: type) -> dict[str, str]:
    """Each Config field's one-line description (studies not yet built with the kit have none)."""
    return describe(config_cls)


def _array_shapes(run_dir: Path) -> dict[str, str]:
    path = run_dir / "arrays.npz"
    if not path.exists():
        return {}
    # read_npz never unpickles, and words a damaged file without numpy's "load unsafely" advice
    return {k: f"{v.shape} {v.dtype}" for k, v in read_npz(path).items()}


def write_report(run_dir: str | Path, *, results: Any = None) -> Path:
    """Save figures (PNG and SVG) under ``run_dir/figures`` and write ``run_dir/report.html``.

    Args:
      run_dir: a complete run directory (it has ``config.json``).
      results: the study's results if already in memory; loaded from ``run_dir`` otherwise.

    Returns:
      The path of ``report.html``.

    Raises:
      SweepError: ``run_dir`` is not a complete run directory.
      CorruptRunError: a results file cannot be read.
      StudyError: the study's ``load``, ``figures``, ``summary`` or ``verdict`` failed.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise sweep.SweepError(f"report: {run_dir} holds no config.json (is the run complete?)")
    meta = read_json(run_dir / "config.json")
    if not isinstance(meta, dict):
        raise CorruptRunError(f"cannot read {run_dir / 'config.json'}: not a JSON object")
    manifest = sweep.read_manifest(run_dir)
    study = (manifest or {}).get("study") or meta.get("kind") or ""
    config = meta.get("config", {})
    environment = (manifest or {}).get("environment") or meta.get("environment") or {}
    arrays = _array_shapes(run_dir)

    module = None
    if study in registry.planned():
        try:
            module = registry.get(study)
            sweep.check_study(module)
        except registry.UnknownStudyError:
            module = None  # a run of a study this installation lacks: generic report
    figures: dict[str, tuple[bytes, bytes]] = {}
    about: dict[str, Any] = {}
    if module is not None:
        if results is None:
            results = sweep.call(study, "load", module.load, run_dir)
        summary = sweep.call(study, "summary", module.summary, results)
        if hasattr(module, "verdict"):
            about["verdict"] = list(sweep.call(study, "verdict", module.verdict, results))
        about["metrics"] = getattr(module, "METRICS", {})
        about["config_docs"] = _config_docs(module.Config)
        about["paper"] = getattr(module, "PAPER", "")
        about["docs"] = getattr(module, "DOCS", "")
        figs = sweep.call(study, "figures", module.figures, results)
        try:
            for name, fig in figs.items():
                figures[_safe_name(name)] = sweep.call(study, "figures", figure_bytes, fig)
        finally:
            import matplotlib.pyplot as plt

            for fig in figs.values():
                plt.close(fig)
        pngs = {name: png for name, (png, _) in figures.items()}
    else:
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
        pngs = {p.stem: p.read_bytes() for p in sorted((run_dir / "figures").glob("*.png"))}

    subtitle = (
        f"{run_dir.resolve()} - study {study or '(unknown)'}"
        + (f", {manifest['num_points']} sweep points" if (manifest or {}).get("num_points") else "")
        + f" - report written {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    page = render_html(
        title=f"hessian-lab: {study or run_dir.name}",
        subtitle=subtitle,
        summary=summary if isinstance(summary, Mapping) else {},
        config=config if isinstance(config, Mapping) else {},
        environment=environment,
        arrays=arrays,
        pngs=pngs,
        **about,
    )
    for name, (png, svg) in figures.items():
        atomic_write_bytes(run_dir / "figures" / f"{name}.png", png)
        atomic_write_bytes(run_dir / "figures" / f"{name}.svg", svg)
    atomic_write_bytes(run_dir / "report.html", page.encode())
    return run_dir / "report.html"
