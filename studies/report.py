"""One self-contained HTML page per run directory: figures, summary, config and environment.

:func:`write_report` loads a complete run directory with its study's ``load``, draws the study's
``figures``, saves each as ``<run_dir>/figures/<name>.png`` and ``.svg``, and writes
``<run_dir>/report.html`` with the PNGs embedded as base64 (the page needs no other file). A run
directory whose study is unknown (e.g. written by ``hessian-lab sharpness``) still gets a report:
its tables, and any PNGs already in ``figures/``.

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

import numpy as np

from hessian_lab.io import CorruptRunError, atomic_write_bytes, read_json

from . import registry, sweep

__all__ = ["figure_bytes", "render_html", "write_report"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; font-size: 1.2em; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
td, th { border: 1px solid #ddd; padding: 3px 9px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { font-family: ui-monospace, monospace; }
figure { display: inline-block; margin: 0.6em; } figcaption { color: #555; text-align: center; }
img { max-width: 100%; border: 1px solid #eee; }
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


def _table(rows: Mapping[str, Any], header: tuple[str, str] = ("name", "value")) -> str:
    if not rows:
        return "<p class='meta'>(none)</p>"
    body = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td class='num'>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return (
        f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
        f"{body}</table>"
    )


def render_html(
    *,
    title: str,
    subtitle: str,
    summary: Mapping[str, Any],
    config: Mapping[str, Any],
    environment: Mapping[str, Any],
    arrays: Mapping[str, str],
    pngs: Mapping[str, bytes],
) -> str:
    """Build the report page; ``pngs`` are embedded as base64 data URIs."""
    figures = "".join(
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'><figcaption>{html.escape(name)}</figcaption></figure>"
        for name, data in pngs.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{html.escape(subtitle)}</p>
<h2>Figures</h2>
{figures or "<p class='meta'>(no figures)</p>"}
<h2>Summary</h2>
{_table(summary)}
<h2>Config</h2>
{_table(config, ("field", "value"))}
<h2>Arrays</h2>
{_table(arrays, ("array", "shape and dtype"))}
<h2>Environment</h2>
{_table(environment, ("", ""))}
</body></html>
"""


def _array_shapes(run_dir: Path) -> dict[str, str]:
    path = run_dir / "arrays.npz"
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: f"{z[k].shape} {z[k].dtype}" for k in z.files}
    except Exception as e:
        raise CorruptRunError(f"cannot read {path}: {type(e).__name__}: {e}") from e


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
      StudyError: the study's ``load``, ``figures`` or ``summary`` failed.
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
    if module is not None:
        if results is None:
            results = sweep._call(study, "load", module.load, run_dir)
        summary = sweep._call(study, "summary", module.summary, results)
        figs = sweep._call(study, "figures", module.figures, results)
        try:
            for name, fig in figs.items():
                figures[_safe_name(name)] = sweep._call(study, "figures", figure_bytes, fig)
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
    )
    for name, (png, svg) in figures.items():
        atomic_write_bytes(run_dir / "figures" / f"{name}.png", png)
        atomic_write_bytes(run_dir / "figures" / f"{name}.svg", svg)
    atomic_write_bytes(run_dir / "report.html", page.encode())
    return run_dir / "report.html"
