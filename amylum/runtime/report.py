"""A short human-readable run report: ``RUN_DIR/report.md`` with PNG plots in ``RUN_DIR/plots``.

Built only from files in the run directory (config.toml, metrics.jsonl, summary.json), so
``amylum report RUN_DIR`` can rebuild it any time, e.g. for a run that was interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    acc_keys = sorted({k for r in evals for k in r if k.startswith("accuracy")})
    if _plot(plots / "eval_accuracy.png", "held-out answer accuracy", "accuracy",
             {k: _series(evals, k) for k in acc_keys}):
        figures.append(("Held-out accuracy", "plots/eval_accuracy.png"))
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
        lines += ["## Held-out evaluation (last)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {last[k]:.3f} |" for k in acc_keys if k in last]
        lines.append("")
    if train:
        last = train[-1]
        lines += ["## Last logged training step", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in last.items() if k not in ("step", "kind") and isinstance(v, (int, float))]
        lines.append("")
    for title, rel in figures:
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    lines += ["Files: `config.toml` (resolved config), `metrics.jsonl`, `tensorboard/`, `checkpoints/`, `export/`.", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
