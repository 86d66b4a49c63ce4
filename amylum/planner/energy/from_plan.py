"""From a planner plan to its iteration's computation DAG, frontier and savings.

The per-(stage, action) times at the maximum clock come from the planner's own cost model
(``amylum.planner.simulate.stage_costs``), the action lists from the simulator (the
``build_schedule`` lists for 1F1B/GPipe; frozen stages get no B), and the per-clock options from a frequency
profile: the analytic model with H100 parameters (``H100``) unless a measured one is given.

What the DAG leaves out, as in Perseus: P2P transfer time and the DP gradient all-reduce are
not nodes, so the DAG's all-max makespan is shorter than the simulator's iteration time
(``PlanDAG.sim_iteration_s`` keeps the latter for the reader). Every savings figure here is
relative to the DAG (computations + blocking power), not to the whole iteration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .actions import dag_from_actions
from .dag import ComputationDAG, Option
from .frontier import Frontier, FrontierPoint, solve_frontier
from .profiles import AnalyticGPU, FrequencyProfile, ProfileError, analytic

# H100 SXM parameters for the analytic model (profiles.py), shape only: measure
# (`amylum energy-profile`) for real plans.
# - Clocks: 1980 MHz is the top SM (boost) clock; 15 MHz is NVML's step; the sweep stops at
#   half the top clock, well below the model's least-energy clock (Perseus also stops a sweep
#   once energy keeps rising; slower clocks are dominated and filtered out anyway).
# - Power while computing: ~650 W at full clock for dense bf16 work (TDP 700 W; 604 W measured
#   on a 1.5B LLM step, docs/BENCHMARKS.md). 180 W of it does not scale with the SM clock (idle
#   ~100 W plus HBM and uncore that a busy GPU drives); it must exceed the blocking power below,
#   or e' = e − P_blocking·t keeps falling to the lowest clock and T* is absurdly slow.
# - Voltage stops falling at 0.75·f_max (~1485 MHz), an assumption: it puts the least-energy
#   clock there, T* ≈ 1.3 × the fastest iteration (Perseus's GPUs: 1.11–1.20).
H100 = AnalyticGPU(f_max_mhz=1980, f_min_mhz=990, step_mhz=15, p_static_w=180.0, p_dynamic_w=470.0,
                   v_floor=0.75, mem_fraction=0.1)
# Power of an H100 blocked in a NCCL receive. Perseus measured 70 W (A40) and 84 W (A100);
# an idle H100 SXM draws 70–120 W. Per GPU; a stage's blocking power is this × its TP width.
H100_BLOCKING_W = 100.0

# Floor for a computation the cost model says is free (a relay stage's empty backward): the
# DAG needs a positive time, and a microsecond is below any clock's effect.
_MIN_TIME_S = 1e-6


@dataclass(frozen=True)
class PlanDAG:
    dag: ComputationDAG
    times_at_max: dict[tuple[int, str], float]  # (stage, "F"|"B"|"W") → seconds at max clock
    gpus_per_stage: dict[int, int]
    frozen_stages: tuple[int, ...]  # stages with no backward (F only)
    microbatches: int
    sim_iteration_s: float | None  # the simulator's iteration time (with P2P and DP sync)


def stage_action_times(plan, model, cluster, split_w: bool,
                       layer_profile=None) -> tuple[dict[tuple[int, str], float], object]:
    """((stage, action) → seconds at max clock, stage graph) from the planner's cost model.

    ``split_w``: W is its own action (zero-bubble schedules); else B carries the weight
    gradient too, the simulator's rule.
    """
    from amylum.planner.cost import CostModel
    from amylum.planner.simulate import stage_costs, stage_graph

    cm = CostModel(cluster, layer_profile, checkpointing=plan.checkpointing)
    costs = stage_costs(plan, model, cm)
    graph = stage_graph(plan, costs)
    times: dict[tuple[int, str], float] = {}
    for s, c in costs.items():
        times[(s, "F")] = max(c.f, _MIN_TIME_S)
        if graph.has_bwd[s]:
            if split_w:
                times[(s, "B")] = max(c.b, _MIN_TIME_S)
                if graph.has_w[s]:
                    times[(s, "W")] = max(c.w, _MIN_TIME_S)
            else:
                times[(s, "B")] = max(c.b + c.w, _MIN_TIME_S)
    return times, graph


def plan_dag(plan, model, cluster, profile: FrequencyProfile | None = None, gpu: AnalyticGPU = H100,
             blocking_power_w: float = H100_BLOCKING_W, microbatches: int | None = None,
             layer_profile=None) -> PlanDAG:
    """The computation DAG of one iteration of ``plan`` (one DP replica; all replicas are alike).

    The action lists are the ones the simulator runs (``SimResult.schedule``: ``build_schedule``
    for 1F1B/GPipe, the zero-bubble list scheduler for "zb"), so the DAG is the planned
    iteration, whatever schedule the search chose.
    ``microbatches`` overrides the plan's count (fewer → smaller DAG, faster frontier; the
    warm-up/cool-down bubbles then weigh more, so say so when reporting).
    ``profile``: per-(stage, action) clocks of **one GPU** of the stage (a measurement); default
    the analytic model of ``gpu`` applied to the cost model's times. Energy is multiplied by
    the stage's TP width (all its GPUs compute together), as blocking power is.
    """
    from amylum.planner.simulate import simulate

    if microbatches is not None:
        if microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}")
        plan = dataclasses.replace(plan, num_microbatches=microbatches)
    sim = simulate(plan, model, cluster, layer_profile, validate=False)
    sched = sim.schedule
    split = any(a.op == "W" for acts in sched.values() for a in acts)
    times, graph = stage_action_times(plan, model, cluster, split, layer_profile)
    if profile is None:
        profile = analytic(times, gpu)
    else:
        missing = [k for k in times if not _has(profile, k)]
        if missing:
            raise ProfileError(f"the profile lacks (stage, action) {missing[:5]} that the plan runs")
    gps = {st.id: st.tp for st in plan.stages}
    scaled = FrequencyProfile({k: tuple(Option(o.freq_mhz, o.time_s, o.energy_j * gps.get(k[0], 1)) for o in opts)
                               for k, opts in profile.table.items()})
    dag = dag_from_actions(sched, scaled, blocking_power_w, gps)
    frozen = tuple(s for s in graph.stages if not graph.has_bwd[s])
    return PlanDAG(dag, times, gps, frozen, plan.num_microbatches, sim.iteration_s)


def _has(profile: FrequencyProfile, key: tuple[int, str]) -> bool:
    try:
        profile.options(*key)
        return True
    except ProfileError:
        return False


# ---- savings ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Savings:
    """Energy of frontier plans against every computation at its maximum clock."""

    t_base_s: float  # all-max makespan
    e_base_j: float  # all-max energy (compute + blocking while waiting)
    idle_share: float  # blocked GPU-time / (GPU-time) at all-max: the slack there is to remove
    frozen_idle_share: float | None  # the same over F-only stages (None: no frozen stage)
    saved_1pct: float  # energy saved by the best plan within ≤ slowdown × t_base
    slowdown_1pct: float  # that plan's real slowdown (≤ slowdown)
    t_star_ratio: float  # T* / t_base
    saved_t_star: float  # saved at T* (no one waits; the iteration takes T*)
    saved_straggler: float  # a straggler at straggler × t_base: min(T′, T*) plan, waits to T′
    straggler: float
    phases: int
    mean_mhz_1pct: dict[int, float]  # per stage: mean clock of its computations in the ≤ 1 % plan


def _real(dag: ComputationDAG, opts: tuple[Option, ...], wait_until: float | None = None) -> tuple[float, float]:
    """(real makespan, energy) of a clock choice; energy charges blocking power up to
    ``wait_until`` if given (a straggler's time), else to the plan's own makespan."""
    t = dag.makespan([o.time_s for o in opts])
    return t, dag.energy(opts, iteration_time_s=max(t, wait_until) if wait_until is not None else t)


def savings(pd: PlanDAG, frontier: Frontier, slowdown: float = 0.01, straggler: float = 1.2) -> Savings:
    dag = pd.dag
    base = all_max(dag)
    t0, e0 = _real(dag, base)
    busy: dict[int, float] = {r: 0.0 for r in dag.order}
    for n, o in zip(dag.nodes, base):
        busy[n.rank] += o.time_s
    gpus = {r: pd.gpus_per_stage.get(r, 1) for r in dag.order}

    def idle(ranks) -> float | None:
        ranks = list(ranks)
        if not ranks:
            return None
        tot = sum(gpus[r] * t0 for r in ranks)
        return sum(gpus[r] * (t0 - busy[r]) for r in ranks) / tot

    o1 = within(frontier, t0 * (1.0 + slowdown)).options
    t1, e1 = _real(dag, o1)
    ts, es = _real(dag, frontier.point(frontier.t_max_units).options)
    t_prime = straggler * t0
    _, e_strag = _real(dag, within(frontier, t_prime).options, wait_until=t_prime)  # = min(T′, T*)
    _, e_base_strag = _real(dag, base, wait_until=t_prime)
    mhz: dict[int, list[int]] = {r: [] for r in dag.order}
    for n, o in zip(dag.nodes, o1):
        mhz[n.rank].append(o.freq_mhz)
    return Savings(t0, e0, idle(dag.order), idle(pd.frozen_stages), 1.0 - e1 / e0, t1 / t0 - 1.0,
                   ts / t0, 1.0 - es / e0, 1.0 - e_strag / e_base_strag, straggler, len(frontier.phases),
                   {r: sum(v) / len(v) for r, v in mhz.items()})


def within(frontier: Frontier, time_s: float) -> FrontierPoint:
    """Least-energy point labelled ≤ ``time_s`` (T* beyond the slow end; the fastest point when
    ``time_s`` is below it, which only τ rounding can cause for a budget ≥ the all-max time)."""
    units = min(frontier.t_max_units, int(time_s / frontier.unit_s + 1e-9))
    return frontier.point(max(units, frontier.t_min_units))


def frontier_for(pd: PlanDAG, unit_time_s: float | None = None, simplify: float = 0.0) -> Frontier:
    """Solve with τ = 1e-4 of the all-max makespan by default: a 1 % budget is 100 units."""
    if unit_time_s is None:
        t0 = pd.dag.makespan([o.time_s for o in all_max(pd.dag)])
        unit_time_s = t0 * 1e-4
    return solve_frontier(pd.dag, unit_time_s=unit_time_s, simplify=simplify)


def all_max(dag: ComputationDAG) -> tuple[Option, ...]:
    """Every computation at its highest clock: the baseline savings are measured against."""
    return tuple(max(n.options, key=lambda o: o.freq_mhz) for n in dag.nodes)
