"""Run reports. ``write_reports`` writes both:

* ``report.html`` + ``report.json``: the full run report (``amylum.evaluation.report``): config,
  data mix, hardware, throughput, energy, eval curves per metric and slice, robustness, failures;
* ``report.md`` with PNG plots in ``plots/``: a short summary that renders anywhere Markdown does.

Built only from files in the run directory (config.toml, metrics.jsonl, summary.json, eval/), so
``amylum report RUN_DIR`` can rebuild them any time, e.g. for a run that was interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

from amylum.runtime.evaluation import headline
from amylum.runtime.metrics import read_jsonl


def _plot(path: Path, title: str, ylabel: str, series: dict[str, tuple[list[int], list[float]]]) -> bool:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, (x, y) in series.items():
        ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=label)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _overall_keys(evals: list[dict]) -> list[str]:
    """Flat eval keys of whole-task scores (``<task>/<metric>``), not slices, counts or robustness."""
    keys = {k for r in evals for k, v in r.items()
            if k.count("/") == 1 and not k.endswith("/n") and isinstance(v, (int, float))}
    # Older runs logged the demo evaluator's "accuracy" and "accuracy/<task>".
    keys |= {k for r in evals for k in r if k == "accuracy" or k.startswith("accuracy/")}
    return sorted(keys)


def _slice_keys(evals: list[dict], overall: str) -> list[str]:
    """``<task>/<metric>/<slice>=<bucket>`` keys of one overall score."""
    return sorted({k for r in evals for k in r if k.startswith(overall + "/") and "=" in k and "robust:" not in k})


def write_reports(run_dir: str | Path) -> dict[str, Path]:
    """report.md (+ plots/) and report.html + report.json; returns their paths."""
    from amylum.evaluation.report import write_run_report

    md = write_report(run_dir)
    json_path, html_path = write_run_report(run_dir)
    return {"md": md, "json": json_path, "html": html_path}


def write_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl")
    if not records:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl records to report on")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)

    figures = []
    if _plot(plots / "loss.png", "training loss", "loss", {"loss": _series(train, "loss")}):
        figures.append(("Loss", "plots/loss.png"))
    acc_keys = _overall_keys(evals)
    if _plot(plots / "eval_accuracy.png", "held-out evaluation", "score",
             {k: _series(evals, k) for k in acc_keys}):
        figures.append(("Held-out evaluation", "plots/eval_accuracy.png"))
    rate_keys = [k for k in ("samples_per_s", "images_per_s", "audio_items_per_s", "audio_seconds_per_s")
                 if any(k in r for r in train)]
    if _plot(plots / "throughput.png", "throughput", "per second", {k: _series(train, k) for k in rate_keys}):
        figures.append(("Throughput", "plots/throughput.png"))

    lines = [f"# amylum run report: `{run_dir.name}`", ""]
    if summary:
        lines += [
            "| | |", "|---|---|",
            f"| model | {summary.get('preset', '?')} on {summary.get('device', '?')} |",
            f"| steps | {summary.get('steps', '?')} ({'complete' if summary.get('completed') else 'incomplete'}) |",
            f"| wall time | {summary.get('wall_seconds', 0):.0f} s (training {summary.get('train_seconds', 0):.0f} s) |",
        ]
        params = summary.get("parameters", {})
        if params:
            lines.append(f"| parameters | {params.get('trainable', 0):,} trainable of {params.get('total', 0):,} |")
        if "final_loss" in summary:
            lines.append(f"| final training loss | {summary['final_loss']:.4f} |")
        lines.append("")
    if evals:
        last = evals[-1]
        top = (headline(last) or ("", 0.0))[0]
        lines += [f"## Held-out evaluation (step {last['step']})", "", "| metric | value | n |", "|---|---|---|"]
        count = lambda key: "" if last.get(key) is None else int(last[key])  # noqa: E731  (item counts)
        for k in acc_keys:
            if k not in last:
                continue
            task = k.split("/")[0]
            lines.append(f"| {k} | {last[k]:.3f} | {count(task + '/n')} |")
            for sk in (_slice_keys([last], k) if k == top else []):  # slices of the headline score only
                label = sk[len(k) + 1:]
                lines.append(f"| &nbsp;&nbsp;{label} | {last[sk]:.3f} | {count(f'{task}/n/{label}')} |")
        lines += ["", "Curves per slice, robustness and failures: `report.html`.", ""]
    if train:
        last = train[-1]
        lines += ["## Last logged training step", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in last.items()
                  if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if last.get("energy_available") is False:
            lines.append(f"| energy | not available: {last.get('energy_unavailable_reason', '')} |")
        lines.append("")
    for title, rel in figures:
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    lines += ["Files: `report.html` (full report, offline), `report.json`, `config.toml` (resolved config), "
              "`metrics.jsonl`, `eval/`, `tensorboard/`, `checkpoints/`, `export/`.", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
