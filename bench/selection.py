"""Mordal search vs grid search on the tiny demo zoo (configs/select-demo.toml), in one run.

    OMP_NUM_THREADS=1 python bench/selection.py [--config configs/select-demo.toml] [--out runs/bench-selection]

1. `amylum select` on the zoo (CKA clustering, successive halving, scaling prediction).
2. Grid search: every pair trained on all the alignment data (same seeds, same trainer) and
   evaluated on the task: the true ranking.
3. Prints: the true top-1, the pick, the pick's true rank, steps and training seconds of both,
   weighted Kendall τ between the search's ranking and the truth, and what random search with
   the search's step budget would find (analytically: k fully-trained random pairs of n).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/select-demo.toml")
    ap.add_argument("--out", default="runs/bench-selection")
    ap.add_argument("--keep", action="store_true", help="reuse OUT (resumes the candidates' checkpoints)")
    args = ap.parse_args()

    from scipy.stats import weightedtau

    from amylum.selection.report import write_report
    from amylum.selection.runner import Budget, PairRunner, prepare_data
    from amylum.selection.search import run_search
    from amylum.selection.settings import load_settings
    from amylum.selection.zoo import Pair

    out = Path(args.out)
    if out.exists() and not args.keep:
        shutil.rmtree(out)
    quiet = lambda _: None  # noqa: E731

    s = load_settings(args.config, {"job": {"out_dir": str(out / "search")}})
    t0 = time.perf_counter()
    result = run_search(s, log=quiet)
    search_wall = time.perf_counter() - t0
    write_report(result, out / "search")

    g = load_settings(args.config, {"job": {"out_dir": str(out / "grid")}})
    runner = PairRunner(g, prepare_data(g), Budget())
    t0 = time.perf_counter()
    truth = {}
    for e in g.encoders:
        for llm in g.llms:
            obs = runner.train_to(Pair(e, llm), 1.0, "grid")
            truth[obs.pair] = obs
    grid_wall = time.perf_counter() - t0
    grid_steps = sum(o.steps for o in truth.values())
    grid_seconds = sum(o.train_seconds for o in truth.values())

    true_order = sorted(truth, key=lambda p: truth[p].error)
    true_rank = {p: i + 1 for i, p in enumerate(true_order)}
    search_rank = {r["pair"]: r["rank"] for r in result.ranking}
    n = len(truth)
    # weightedtau weighs top ranks most (hyperbolic), as Mordal's "weighted Kendall τ" does.
    tau = weightedtau([-true_rank[p] for p in truth], [-search_rank[p] for p in truth]).statistic
    k = result.cost["steps"] // runner.full_steps
    pick = result.selected
    print(f"# selection bench: {platform.node()} ({os.cpu_count()} CPUs), torch threads 1, {time.strftime('%Y-%m-%d')}")
    print(f"zoo: {len(g.encoders)} encoders × {len(g.llms)} LLMs = {n} pairs; metric {g.data.metric}; "
          f"full data = {runner.full_steps} steps")
    print()
    print("| true rank | pair | full-data " + g.data.metric + " | search rank | search basis |")
    print("|---:|---|---:|---:|---|")
    basis = {r["pair"]: r["basis"] if r["status"] == "survivor" else r["status"] for r in result.ranking}
    for p in true_order:
        print(f"| {true_rank[p]} | {p} | {truth[p].score:.4f} | {search_rank[p]} | {basis[p]} |")
    print()
    print("| | grid search | Mordal search |")
    print("|---|---:|---:|")
    print(f"| training steps | {grid_steps} | {result.cost['steps']} |")
    print(f"| training seconds | {grid_seconds:.1f} | {result.cost['train_seconds']:.1f} |")
    print(f"| wall seconds (incl. evaluation, CKA) | {grid_wall:.1f} | {search_wall:.1f} |")
    print(f"| pick | {true_order[0]} | {pick} (true rank {true_rank.get(pick, '—')}) |")
    print()
    print(f"top-1 found: {pick == true_order[0]}; cost ratio grid/search: {grid_steps / max(1, result.cost['steps']):.2f}× steps, "
          f"{grid_seconds / max(1e-9, result.cost['train_seconds']):.2f}× training seconds; weighted Kendall τ {tau:.3f}")
    print(f"random search with the same steps: {k} of {n} pairs fully trained → P(top-1) = {k / n:.2f}")
    print(f"clusters: {[c.members() for c in result.clusters]}")
    (out / "bench.json").write_text(json.dumps({
        "truth": {p: o.to_dict() for p, o in truth.items()}, "search": result.to_dict(), "tau": tau,
        "grid_steps": grid_steps, "grid_seconds": grid_seconds, "search_wall": search_wall, "grid_wall": grid_wall,
    }, indent=2, default=str))


if __name__ == "__main__":
    main()
