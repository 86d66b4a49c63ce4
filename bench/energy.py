"""Frontier solver benchmark: amylum's Phillips–Dessouky vs lowtime 0.3.0 (Perseus's solver).

Same DAGs (synchronous 1F1B, S stages × M microbatches), same profiles, same τ. The profile is
synthetic, as in the reference measurement (shared/reference/perseus.md §7): first stage 1.1×
and last stage 1.3× the middle stages, backward = 2× forward, clocks 1740 → 900 MHz in 15 MHz
steps, P_blocking = 70 W; time and energy per clock come from amylum's documented analytic
model (profiles.AnalyticGPU) with a 38 ms middle-stage forward at 1740 MHz.

lowtime is the baseline only: install it into the venv for this script (`pip install
lowtime==0.3.0`); it is not an amylum dependency, and without it the baseline is skipped.

Energy is compared on real clocks, not on either solver's surrogate: every plan's iteration
time is the longest path of the chosen clocks' real times, its energy Σe + ΣP_b·(T − busy).
At each lowtime point (T, E) we take amylum's plan labelled ⌊T/τ⌋ (its real time is ≤ T; it
waits the rest at blocking power) and report the worst and mean relative energy difference.

    python bench/energy.py                       # both cases, lowtime once each
    python bench/energy.py --cases 4x8 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from amylum.planner.energy.actions import dag_from_actions  # noqa: E402
from amylum.planner.energy.dag import ComputationDAG, Option  # noqa: E402
from amylum.planner.energy.frontier import solve_frontier  # noqa: E402
from amylum.planner.energy.profiles import AnalyticGPU, FrequencyProfile, analytic  # noqa: E402
from amylum.planner.schedule import StageGraph, build_schedule  # noqa: E402

TAU = 1e-3
P_BLOCK = 70.0
F_MID = 0.038


def synthetic_profile(stages: int) -> FrequencyProfile:
    weight = {0: 1.1, stages - 1: 1.3}
    return analytic({(s, k): F_MID * weight.get(s, 1.0) * (2.0 if k == "B" else 1.0)
                     for s in range(stages) for k in "FB"}, AnalyticGPU())


def amylum_dag(stages: int, mbs: int, profile: FrequencyProfile) -> ComputationDAG:
    g = StageGraph({s: ((s - 1,) if s else ()) for s in range(stages)},
                   {s: True for s in range(stages)}, {s: True for s in range(stages)})
    return dag_from_actions(build_schedule(g, mbs, "1f1b"), profile, P_BLOCK)


def run_lowtime(stages: int, mbs: int, profile: FrequencyProfile):
    """Returns (solver seconds, fit seconds, plans as {(stage, kind, mb): MHz} per iteration)."""
    import logging

    import networkx as nx
    from lowtime.cost_model import ExponentialModel
    from lowtime.graph_utils import add_sink_node, add_source_node
    from lowtime.operation import CandidateExecutionOptions, ExecutionOption, OperationSpec
    from lowtime.perseus.instruction import Backward, Forward
    from lowtime.perseus.schedule import Synchronous1F1B
    from lowtime.solver import PhillipsDessouky

    logging.getLogger("lowtime").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    specs = {}
    for s in range(stages):
        for kind, cls in (("F", Forward), ("B", Backward)):
            opts = [ExecutionOption(real_time=o.time_s, unit_time=TAU, cost=o.energy_j - P_BLOCK * o.time_s,
                                    knob=o.freq_mhz) for o in profile.options(s, kind)]
            cand = CandidateExecutionOptions(options=opts)
            specs[(s, cls)] = OperationSpec(options=cand, cost_model=ExponentialModel(cand))
    fit_s = time.perf_counter() - t0
    dag = nx.DiGraph()
    ident = {}
    for s in range(stages):
        sched = Synchronous1F1B(stages, mbs, s, {Forward: specs[(s, Forward)], Backward: specs[(s, Backward)]})
        prev = None
        for inst in sched:
            nid = len(ident)
            kind = "F" if isinstance(inst, Forward) else "B"
            ident[nid] = (s, kind, inst.micro_batch_id)
            dag.add_node(nid, op=inst)
            if prev is not None:
                dag.add_edge(prev, nid)
            prev = nid
    by_key = {v: k for k, v in ident.items()}
    for (s, kind, m), nid in by_key.items():  # F(s,m) → F(s+1,m); B(s+1,m) → B(s,m)
        if kind == "F" and (s + 1, "F", m) in by_key:
            dag.add_edge(nid, by_key[(s + 1, "F", m)])
        if kind == "B" and (s - 1, "B", m) in by_key:
            dag.add_edge(nid, by_key[(s - 1, "B", m)])
    src, snk = len(ident), len(ident) + 1
    add_source_node(dag, src)
    add_sink_node(dag, snk)
    dag.graph["source_node"], dag.graph["sink_node"] = src, snk
    solver = PhillipsDessouky(dag)
    plans = []
    solve_s = 0.0
    t = time.perf_counter()
    gen = solver.run()
    while True:
        try:
            next(gen)
        except StopIteration:
            solve_s += time.perf_counter() - t
            break
        solve_s += time.perf_counter() - t
        plans.append({ident[n]: dag.nodes[n]["op"].assigned_knob for n in ident})  # not timed
        t = time.perf_counter()
    return solve_s, fit_s, plans


def real_points(dag: ComputationDAG, choices):
    """(makespan, energy at makespan) of each per-node option choice."""
    out = []
    for ch in choices:
        t = dag.makespan([o.time_s for o in ch])
        out.append((t, dag.energy(ch, t)))
    return out


def ours_at(dag: ComputationDAG, fr, t: float) -> float:
    """amylum's energy for an iteration of time t: its plan labelled ⌊t/τ⌋ (real time ≤ label ≤ t),
    the rest of t spent blocked."""
    units = min(int(t / fr.unit_s + 1e-9), fr.t_max_units)
    if units < fr.t_min_units:
        return float("inf")  # faster than amylum's shortest plan
    opts = fr.point(units).options
    assert dag.makespan([o.time_s for o in opts]) <= t + 1e-9
    return dag.energy(opts, t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="4x8,8x32")
    ap.add_argument("--repeat", type=int, default=3, help="amylum runs per case and setting (best reported)")
    ap.add_argument("--lowtime-repeat", type=int, default=1)
    ap.add_argument("--configs", default="1e-4:0,1e-4:0.002",
                    help="amylum solver settings to run, 'tau_s:simplify' comma-separated "
                         "(τ = time unit; simplify = hull tolerance, hull.py; 0 = exact). lowtime uses τ = 1 ms.")
    ap.add_argument("--skip-lowtime", action="store_true", help="time amylum only")
    args = ap.parse_args()
    try:
        import lowtime  # noqa: F401
        have_lowtime = not args.skip_lowtime
    except ImportError:
        have_lowtime = False
        print("lowtime is not installed: baseline skipped (pip install lowtime==0.3.0 to compare)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = []
    for case in args.cases.split(","):
        S, M = (int(x) for x in case.split("x"))
        prof = synthetic_profile(S)
        dag = amylum_dag(S, M, prof)
        node_key = [(n.stage, n.kind, n.microbatch) for n in dag.nodes]
        maxclk = [max(n.options, key=lambda o: o.freq_mhz) for n in dag.nodes]
        e_max = dag.energy(maxclk)
        theirs = None
        if have_lowtime:
            lt_best = float("inf")
            for _ in range(args.lowtime_repeat):
                lt_s, fit_s, plans = run_lowtime(S, M, prof)
                lt_best = min(lt_best, lt_s)
            opt = {(s, k): {o.freq_mhz: o for o in prof.options(s, k)} for s in range(S) for k in "FB"}
            theirs = real_points(dag, [[opt[(s, k)][p[(s, k, m)]] for (s, k, m) in node_key] for p in plans])
            print(f"{case}: lowtime solve {lt_best:.2f} s, {len(plans)} iterations "
                  f"(+{fit_s:.2f} s fitting its exponential models, not counted)", flush=True)
        for cfg in args.configs.split(","):
            tau, simplify = (float(x) for x in cfg.split(":"))
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fr = solve_frontier(dag, tau, simplify)
                best = min(best, time.perf_counter() - t0)
            fast_ours = real_points(dag, [fr.point(fr.t_min_units).options])[0]
            row = {"case": case, "cfg": f"τ={tau * 1e3:g} ms, simplify={simplify:g}", "ops": len(dag.nodes),
                   "ours_s": best, "phases": len(fr.phases), "save_ours": 1 - fast_ours[1] / e_max}
            if theirs is not None:
                diffs = [(ours_at(dag, fr, t) - e) / e for t, e in theirs]
                row.update(lt_s=lt_best, iters=len(theirs), ratio=lt_best / best, worst=max(diffs),
                           mean=sum(diffs) / len(diffs), save_lt=1 - min(theirs)[1] / e_max)
            rows.append(row)
            print(f"{case} {row['cfg']}: amylum solve {best:.3f} s, {len(fr.phases)} phases", flush=True)
    print()
    print("| case | amylum settings | ops | lowtime 0.3.0 solve (iterations) | amylum solve (phases) | speed-up | "
          "amylum energy − lowtime's at matched T: worst / mean | fastest plan saves vs all-max (lowtime / amylum) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "lt_s" in r:
            print(f"| {r['case']} | {r['cfg']} | {r['ops']} | {r['lt_s']:.2f} s ({r['iters']}) | {r['ours_s']:.3f} s ({r['phases']}) | "
                  f"{r['ratio']:.1f}× | {100 * r['worst']:+.2f} % / {100 * r['mean']:+.2f} % | "
                  f"{100 * r['save_lt']:.1f} % / {100 * r['save_ours']:.1f} % |")
        else:
            print(f"| {r['case']} | {r['cfg']} | {r['ops']} | skipped | {r['ours_s']:.3f} s ({r['phases']}) | – | – | "
                  f"– / {100 * r['save_ours']:.1f} % |")


if __name__ == "__main__":
    main()
