"""Human views of a simulation: a summary, a text timeline and a Gantt chart (PNG)."""

from __future__ import annotations

from pathlib import Path

from .plan import Plan
from .simulate import SimResult

_CHAR = {"F": "F", "B": "B", "W": "W"}


def summary(plan: Plan, sim: SimResult) -> str:
    lines = [f"iteration {sim.iteration_s * 1e3:.1f} ms | bubble {sim.bubble_fraction:.1%} | "
             f"peak memory {sim.max_peak_mem / 1e9:.1f} GB (budget {sim.mem_limit / 1e9:.0f} GB) | "
             f"{plan.world_size} GPUs = dp {plan.dp} x {plan.gpus_per_replica} per replica | "
             f"{plan.num_microbatches} microbatches of {plan.microbatch_size}",
             f"{'stage':>5} {'chain':<10} {'layers':<34} {'tp':>2} {'busy s':>8} {'idle s':>8} {'dp sync s':>9} "
             f"{'peak GB':>8}"]
    for st in plan.stages:
        span = st.layers[0] if len(st.layers) == 1 else f"{st.layers[0]}..{st.layers[-1].split('.')[-1]}"
        lines.append(f"{st.id:>5} {st.chain:<10} {span[:34]:<34} {st.tp:>2} {sim.busy_s[st.id]:>8.3f} "
                     f"{sim.idle_s[st.id]:>8.3f} {sim.dp_sync_s[st.id]:>9.3f} {sim.peak_mem[st.id] / 1e9:>8.1f}")
    return "\n".join(lines)


def text_timeline(plan: Plan, sim: SimResult, width: int = 100) -> str:
    """One row per stage; each column is iteration_time/width seconds; '.' is idle."""
    T = sim.iteration_s or 1.0
    rows = {st.id: ["."] * width for st in plan.stages}
    for s, op, _mb, a, b in sim.trace.events:
        lo = min(width - 1, int(a / T * width))
        hi = max(lo + 1, min(width, int(round(b / T * width))))
        for i in range(lo, hi):
            rows[s][i] = _CHAR[op]
    return "\n".join(f"s{sid:<3}|{''.join(r)}|" for sid, r in rows.items())


def gantt_png(plan: Plan, sim: SimResult, path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    colors = {"F": "#4c72b0", "B": "#dd8452", "W": "#55a868"}
    n = len(plan.stages)
    fig, ax = plt.subplots(figsize=(12, 0.45 * n + 1.5))
    for s, op, mb, a, b in sim.trace.events:
        ax.barh(s, b - a, left=a, height=0.8, color=colors[op], edgecolor="white", linewidth=0.3)
        if n <= 16 and (b - a) > sim.iteration_s / 80:
            ax.text(a + (b - a) / 2, s, str(mb), ha="center", va="center", fontsize=6, color="white")
    for st in plan.stages:
        if sim.dp_sync_s[st.id] > 0:
            end = sim.trace.end[st.id]
            ax.barh(st.id, sim.dp_sync_s[st.id], left=end, height=0.8, color="#8172b3")
    ax.set_yticks([st.id for st in plan.stages])
    ax.set_yticklabels([f"s{st.id} {st.chain} tp{st.tp}" for st in plan.stages], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(title or f"{plan.model}: {sim.iteration_s * 1e3:.1f} ms/iteration, bubble {sim.bubble_fraction:.1%}"
                 "  (F blue, B orange, W green, DP sync purple)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
