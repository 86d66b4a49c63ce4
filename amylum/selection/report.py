"""``OUT/report.md`` and ``OUT/search.png`` from a :class:`SearchResult`.

The report holds the ranking (predicted and observed scores), the clusters, every decision with
its reason, and the cost spent against an estimated grid search (every pair on all the data).
"""

from __future__ import annotations

from pathlib import Path

from amylum.selection.search import SearchResult


def _fmt(v, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def ranking_table(result: SearchResult) -> str:
    lines = [f"| rank | pair | cluster | status | basis | predicted {result.metric} (r=1) | observed {result.metric} | at r | steps |",
             "|---:|---|---|---|---|---:|---:|---:|---:|"]
    for r in result.ranking:
        pred = _fmt(r["predicted_score"]) + ("" if r["fit_accepted"] or r["predicted_score"] is None else " (fit rejected)")
        lines.append(f"| {r['rank']} | {r['pair']} | {r['cluster']} | {r['status']} | {r['basis']} | {pred} | "
                     f"{_fmt(r['observed_score'])} | {_fmt(r['observed_fraction'], 3)} | {r['steps']} |")
    return "\n".join(lines)


def write_report(result: SearchResult, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_search(result, out / "search.png")
    c = result.cost
    lines = [
        "# Encoder × LLM selection (Mordal)", "",
        f"Selected: **{result.selected or 'none (no candidate was evaluated)'}** — metric `{result.metric}`; "
        f"full data = {result.full_steps} steps per pair.", "",
        "## Cost", "",
        "| | steps | training seconds |", "|---|---:|---:|",
        f"| this search (incl. warm-ups) | {c['steps']} | {c['train_seconds']} |",
        f"| grid search, estimated ({c['pairs']} pairs × {result.full_steps} steps) | {c['grid_steps_estimate']} | {c['grid_train_seconds_estimate']} |",
        "",
        f"Grid / search: {c['step_ratio']}× in steps; {c['trained_pairs']} of {c['pairs']} pairs trained at all; "
        f"wall time {c['wall_seconds']} s (CKA and evaluations included).",
    ]
    if c.get("budget_exhausted"):
        lines += ["", f"**Budget exhausted:** {c['budget_exhausted']}"]
    lines += ["", "## Ranking", "", ranking_table(result), "",
              "`predicted`: extrapolated log-log fit (loss ≤ δ). `observed at r (no fit)`: SHA fallback. "
              "Pruned clusters rank below survivors; only their representative was trained.", "",
              "## Clusters", ""]
    for cl in result.clusters:
        lines.append(f"- **{cl.id}**: encoders {', '.join(cl.encoders)} × LLMs {', '.join(cl.llms)}; representative {cl.representative}")
    lines += ["", "## Decisions", "", "| stage | subject | decision | reason |", "|---|---|---|---|"]
    lines += [f"| {d['stage']} | {d['subject']} | {d['decision']} | {d['reason']} |" for d in result.decisions]
    if plot:
        lines += ["", "## Search", "", f"![search]({plot.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_search(result: SearchResult, path: Path) -> Path | None:
    """Left: encoder CKA. Right: error vs data fraction per pair (log-log), fits extrapolated to r = 1."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt
    import numpy as np

    if not result.observations:
        return None
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.6]})
    names, m = result.encoder_cka["names"], np.asarray(result.encoder_cka["matrix"])
    im = ax0.imshow(m, vmin=0, vmax=1, cmap="viridis")
    ax0.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax0.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax0.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
    ax0.set_title("encoder CKA on task images")
    fig.colorbar(im, ax=ax0, fraction=0.046)
    status = {r["pair"]: r["status"] for r in result.ranking}
    pairs = sorted({o.pair for o in result.observations})
    colors = plt.cm.tab10(np.linspace(0, 1, max(10, len(pairs))))
    for k, name in enumerate(pairs):
        pts = sorted((o.fraction, o.error) for o in result.observations if o.pair == name)
        x, y = zip(*pts)
        pruned = status.get(name, "").startswith("pruned")
        style = dict(color="0.6", ls=":", marker="x") if pruned else dict(color=colors[k % len(colors)], marker="o")
        width = 2.5 if name == result.selected else 1.0
        ax1.plot(x, y, lw=width, label=name + (" (selected)" if name == result.selected else ""), **style)
        fit = result.fits.get(name)
        if fit and not pruned:
            xs = np.geomspace(min(fit["fractions"]), 1.0, 20)
            ax1.plot(xs, np.exp(fit["alpha"] + fit["beta"] * np.log(xs)), ls="--" if fit["accepted"] else ":",
                     color=style["color"], lw=width)
            ax1.plot([1.0], [fit["predicted_full"]], marker="*" if fit["accepted"] else "^", ms=10, color=style["color"])
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("fraction of the alignment data")
    ax1.set_ylabel(f"task error ({'loss' if result.metric == 'loss' else '1 − ' + result.metric})")
    ax1.set_title("search: halving (grey = pruned), scaling fits (dashed), predictions at r=1 (★)")
    ax1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
