"""Simulated energy savings of GPU frequency plans on the planner's plans (Cornstarch grid).

For every model (VLM/ALM/VALM × small/medium/large) and freezing scenario, the planner chooses a
plan (``amylum.planner.search.search``); its iteration becomes a computation DAG (the
simulator's action lists, per-(stage, action) times from the cost model, per-clock time and
energy from the analytic H100 model in ``amylum.planner.energy.from_plan``, blocking power
100 W per GPU); the Phillips–Dessouky frontier is solved, and the table gives the energy saved
against every computation at the maximum clock (1980 MHz):

- ``save<=1%``: best plan at most 1 % slower (its real slowdown in parentheses);
- ``T*/T0``, ``save@T*``: the minimum-energy end of the frontier, iteration time and saving;
- ``strag1.2``: a straggler elsewhere holds the iteration to 1.2 × T0; this pipeline runs the
  min(T′, T*) plan and waits, against all-max that waits too;
- ``idle``: blocked share of GPU-time at all-max (the slack); ``frozen``: the same over stages
  with no backward, and the mean clock (MHz) of frozen vs other stages in the ≤ 1 % plan.

A second block forces modality-parallel placement (``SearchOptions(placements=...)``) for
models whose encoder spans several stages, where frozen encoder stages (F only) appear: they
idle most of the iteration and run at low clocks without slowing it.

Savings are of the DAG's energy (computations + blocking power): P2P transfers and the DP
all-reduce are not nodes (as in Perseus). Microbatches above --max-microbatches are cut to it
to keep the solve short (the m column says e.g. 24/96); bubbles then weigh more.

    python bench/energy_grid.py                 # 27 cells + 4 modality-parallel cells, 32 H100s
    python bench/energy_grid.py --models VLM-small --scenarios frozen_encoders --mp-models
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from amylum.planner.energy.from_plan import frontier_for, plan_dag, savings  # noqa: E402
from amylum.planner.presets import GRID, preset_model  # noqa: E402
from amylum.planner.search import SearchOptions, search  # noqa: E402
from amylum.planner.spec import FREEZING_SCENARIOS, ClusterSpec, freeze  # noqa: E402

SHORT = {"projector_only": "a:proj", "frozen_encoders": "b:llm+proj", "all_trainable": "c:all"}
HEADER = (f"{'model':<12} {'freeze':<10} {'plan':<28} {'m':>6} {'nodes':>5} {'idle':>5} {'save<=1%':>14} "
          f"{'T*/T0':>5} {'save@T*':>7} {'strag1.2':>8} {'frozen idle, MHz f/o':>21} {'solve s':>7}")


def describe(plan) -> str:
    chains: dict[str, list[int]] = {}
    for s in plan.stages:
        chains.setdefault(s.chain, []).append(s.tp)
    parts = "/".join(f"{c[:3]}{len(t)}x{t[0]}" for c, t in chains.items())
    return f"{'MP' if plan.placement == 'modality_parallel' else 'CO'} {parts} {plan.schedule}"


def row(name: str, scenario: str, gpus: int, batch: int, max_mb: int, simplify: float,
        placements: tuple[str, ...] | None = None) -> dict | None:
    model = freeze(preset_model(name), scenario)
    cluster = ClusterSpec.of(gpus)
    try:
        res = search(model, cluster, batch, SearchOptions(placements=placements) if placements else None)
    except ValueError:
        print(f"{name:<12} {SHORT[scenario]:<10} nothing fits", flush=True)
        return None
    plan = res.plan
    m = min(plan.num_microbatches, max_mb)
    t0 = time.perf_counter()
    pd = plan_dag(plan, model, cluster, microbatches=m)
    fr = frontier_for(pd, simplify=simplify)
    sv = savings(pd, fr)
    solve = time.perf_counter() - t0
    if pd.frozen_stages:
        fz = set(pd.frozen_stages)
        f_mhz = sum(sv.mean_mhz_1pct[s] for s in fz) / len(fz)
        o = [v for s, v in sv.mean_mhz_1pct.items() if s not in fz]
        frozen = f"{sv.frozen_idle_share:5.1%}, {f_mhz:.0f}/{sum(o) / len(o):.0f}"
    else:
        frozen = "-"
    mcol = f"{m}" if m == plan.num_microbatches else f"{m}/{plan.num_microbatches}"
    print(f"{name:<12} {SHORT[scenario]:<10} {describe(plan):<28} {mcol:>6} {len(pd.dag.nodes):>5} "
          f"{sv.idle_share:5.1%} {sv.saved_1pct:6.1%} ({sv.slowdown_1pct:4.1%}) {sv.t_star_ratio:5.2f} "
          f"{sv.saved_t_star:7.1%} {sv.saved_straggler:8.1%} {frozen:>21} {solve:7.2f}", flush=True)
    return {"saved": sv.saved_1pct, "pipelined": len(plan.stages) > 1, "frozen": bool(pd.frozen_stages)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[m for m in GRID if m != "tiny"])
    ap.add_argument("--scenarios", nargs="+", default=list(FREEZING_SCENARIOS), choices=FREEZING_SCENARIOS)
    ap.add_argument("--gpus", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=96)
    ap.add_argument("--max-microbatches", type=int, default=24, help="cut larger microbatch counts to this")
    ap.add_argument("--simplify", type=float, default=0.002, help="solver hull tolerance (0: exact)")
    ap.add_argument("--mp-models", nargs="*", default=["VLM-medium", "VLM-large", "ALM-medium", "ALM-large"],
                    help="models to also plan modality-parallel under frozen_encoders (frozen stages)")
    args = ap.parse_args(argv)

    t_all = time.perf_counter()
    print(f"{args.gpus} H100s (simulated), global batch {args.global_batch}, analytic H100 model 1980-990 MHz, "
          f"blocking 100 W/GPU, simplify={args.simplify}, microbatches cut to {args.max_microbatches}")
    print(HEADER)
    rows = [row(n, sc, args.gpus, args.global_batch, args.max_microbatches, args.simplify)
            for n in args.models for sc in args.scenarios]
    if args.mp_models:
        print("\nmodality-parallel plans (forced), frozen_encoders: frozen encoder stages have no backward")
        print(HEADER)
        rows += [row(n, "frozen_encoders", args.gpus, args.global_batch, args.max_microbatches, args.simplify,
                     ("modality_parallel",)) for n in args.mp_models]
    done = [r for r in rows if r]
    pipe = [r["saved"] for r in done if r["pipelined"]]
    single = [r["saved"] for r in done if not r["pipelined"]]
    print()
    if pipe:
        print(f"saved at <= 1% slowdown, pipelined plans ({len(pipe)}): {min(pipe):.1%} to {max(pipe):.1%}, "
              f"mean {sum(pipe) / len(pipe):.1%}")
    if single:
        print(f"single-stage plans ({len(single)}, no pipeline slack, uniform down-clocking only): "
              f"{min(single):.1%} to {max(single):.1%}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
