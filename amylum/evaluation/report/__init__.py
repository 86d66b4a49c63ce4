"""The run report: ``report.json`` (machine-readable) and ``report.html`` (offline) from a run directory."""

from __future__ import annotations

import json
from pathlib import Path

from amylum.evaluation.report.gather import gather
from amylum.evaluation.report.render import render


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None,
                     *, regression_threshold: float = 0.05) -> tuple[Path, Path]:
    """Gather ``run_dir`` and write ``report.json`` and ``report.html`` (into ``out_dir``, default ``run_dir``)."""
    report = gather(run_dir, regression_threshold=regression_threshold)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    html_path.write_text(render(report))
    return json_path, html_path


__all__ = ["gather", "render", "write_run_report"]
