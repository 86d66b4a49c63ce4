"""Simulate a plan: iteration time, per-stage/rank busy and idle, bubble fraction, peak memory.

The plan's schedule is generated, validated and replayed on the cost model. Iteration time is
the latest stage finish plus that stage's DP gradient all-reduce (not overlapped: conservative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .cost import CostModel, StageCost, grad_needs
from .plan import Plan
from .replay import Trace, replay
from .schedule import Action, StageGraph, build_schedule
from .spec import ClusterSpec, ModelSpec
from .validate import ScheduleError, schedule_errors
from .zerobubble import memory_caps, zero_bubble_schedule


@dataclass
class SimResult:
    iteration_s: float
    busy_s: dict[int, float]
    idle_s: dict[int, float]
    dp_sync_s: dict[int, float]
    peak_mem: dict[int, float]
    bubble_fraction: float
    stage_gpus: dict[int, int]
    trace: Trace
    schedule: dict[int, list[Action]] = field(repr=False, default_factory=dict)
    mem_limit: float = 0.0

    @property
    def max_peak_mem(self) -> float:
        return max(self.peak_mem.values())

    @property
    def fits(self) -> bool:
        return self.max_peak_mem <= self.mem_limit

    def per_rank(self, plan: Plan) -> dict[int, dict]:
        out = {}
        for st in plan.stages:
            for rep in st.ranks:
                for r in rep:
                    out[r] = {"stage": st.id, "busy_s": self.busy_s[st.id], "idle_s": self.idle_s[st.id],
                              "peak_mem": self.peak_mem[st.id]}
        return out


def stage_costs(plan: Plan, model: ModelSpec, cm: CostModel) -> dict[int, StageCost]:
    by_name = {l.name: l for l in model.all_layers()}
    needs = grad_needs(model)
    out = {}
    for st in plan.stages:
        unknown = [n for n in st.layers if n not in by_name]
        if unknown:
            raise ValueError(f"stage {st.id}: layers {unknown[:5]} are not in model {model.name}")
        out[st.id] = cm.stage_cost([by_name[n] for n in st.layers], needs, plan.microbatch_size, st.tp, plan.dp,
                                   cp=st.cp)
    return out


def stage_graph(plan: Plan, costs: dict[int, StageCost]) -> StageGraph:
    """The stage DAG with who runs backward.

    A stage downstream of one with backward work must run a (possibly empty) backward to relay
    gradients: in a colocated chain a frozen audio encoder's stage sits between the vision
    projector and the LLM and passes the projector's features, and their gradients, through.
    """
    inputs = {s.id: tuple(s.inputs) for s in plan.stages}
    bwd = {s: c.has_bwd for s, c in costs.items()}
    changed = True
    while changed:  # fixpoint: plans written by hand need not list stages in topological order
        changed = False
        for s, ins in inputs.items():
            if not bwd[s] and any(bwd[p] for p in ins):
                bwd[s] = changed = True
    return StageGraph(inputs=inputs, has_bwd=bwd, has_w={s: c.has_w for s, c in costs.items()})


def _crosses_nodes(plan: Plan, a: int, b: int, cluster: ClusterSpec) -> bool:
    ra, rb = plan.stage(a).ranks, plan.stage(b).ranks
    if not ra or not rb:
        return plan.gpus_per_replica * plan.dp > cluster.gpus_per_node
    g = cluster.gpus_per_node
    return any(x[0] // g != y[0] // g for x, y in zip(ra, rb))


def prescreen(plan: Plan, model: ModelSpec, cluster: ClusterSpec, cm: CostModel) -> tuple[float, bool]:
    """(a lower bound on the iteration time, whether the plan fits in memory under 1F1B/GPipe).

    Cheap (no schedule, no replay), so the search can skip plans that cannot win or cannot fit.
    The bound, per stage: nothing starts before the forwards upstream of it have run for the
    first microbatch; then the stage runs all its F/B/W for every microbatch and its DP sync;
    and its last B (B runs in microbatch order) is followed by the B of every stage upstream
    on the way back, for the last microbatch (B + W under 1F1B/GPipe, B alone under a W split).
    The memory is exact for the generated 1F1B (GPipe) lists: a stage with backward work holds
    min(m, stages downstream + 1) (m) microbatches at its peak.
    """
    costs = stage_costs(plan, model, cm)
    g = stage_graph(plan, costs)
    depth = g.depth
    m = plan.num_microbatches
    split = plan.split_w or plan.schedule == "zb"
    stages = {st.id: st for st in plan.stages}
    bwd = {s: (c.b if split else c.b + c.w) for s, c in costs.items()}
    up: dict[int, float] = {}
    up_b: dict[int, float] = {}
    for s in sorted(costs, key=lambda x: -depth[x]):  # sources first: deeper stages are upstream
        up[s] = max((up[p] + costs[p].f for p in g.inputs[s]), default=0.0)
        up_b[s] = max((up_b[p] + bwd[p] for p in g.inputs[s] if g.has_bwd[p]), default=0.0)
    lb = 0.0
    fits = True
    for s, c in costs.items():
        lb = max(lb, up[s] + m * c.total + cm.dp_sync_time(c, plan.dp, stages[s].tp))
        if g.has_bwd[s]:
            lb = max(lb, up[s] + m * (c.f + bwd[s]) + up_b[s])
        held = 0 if not g.has_bwd[s] else (m if plan.schedule == "gpipe" else min(m, depth[s] + 1))
        fits = fits and c.static_bytes + held * c.act_bytes + c.transient_bytes <= cluster.gpu.memory_bytes
    return lb, fits


def simulate(plan: Plan, model: ModelSpec, cluster: ClusterSpec, profile=None,
             cost_model: CostModel | None = None, validate: bool = True) -> SimResult:
    cm = cost_model or CostModel(cluster, profile, checkpointing=plan.checkpointing)
    costs = stage_costs(plan, model, cm)
    g = stage_graph(plan, costs)
    split = plan.split_w or plan.schedule == "zb"  # zero-bubble ordering is defined by its W split
    stages = {st.id: st for st in plan.stages}
    inter = {}
    for st in plan.stages:
        for p in st.inputs:
            inter[(p, st.id)] = inter[(st.id, p)] = _crosses_nodes(plan, p, st.id, cluster)

    def duration(s: int, op: str) -> float:
        c = costs[s]
        if op == "F":
            return c.f
        if op == "B":
            return c.b if split else c.b + c.w
        return c.w

    def transfer(src: int, dst: int, data: str) -> float:
        # gradients have the shape of the activations they flow back through
        nbytes = costs[src].out_bytes if data == "act" else costs[dst].out_bytes
        return cm.p2p_time(nbytes / stages[src].tp, inter[(src, dst)])

    def last_bwd(s: int) -> str:
        return "W" if split and costs[s].has_w else "B"

    if plan.schedule == "zb":
        # the order is found on these durations; the replay below reproduces its times
        free = {s: cluster.gpu.memory_bytes - c.static_bytes - c.transient_bytes for s, c in costs.items()}
        caps = memory_caps(g, plan.num_microbatches, free, {s: c.act_bytes for s, c in costs.items()})
        sched = zero_bubble_schedule(g, plan.num_microbatches, duration, transfer, caps)
    else:
        sched = build_schedule(g, plan.num_microbatches, plan.schedule, plan.split_w)
    errs = schedule_errors(sched, plan.num_microbatches) if validate else []
    if errs:  # generated schedules are valid by construction; this guards the generator
        raise ScheduleError("generated schedule is invalid:\n  " + "\n  ".join(errs))

    tr = replay(sched, duration, transfer, last_bwd)
    sync = {s: cm.dp_sync_time(c, plan.dp, stages[s].tp) for s, c in costs.items()}
    T = max(tr.end[s] + sync[s] for s in costs)
    busy = {s: 0.0 for s in costs}
    for s, _op, _mb, a, b in tr.events:
        busy[s] += b - a
    idle = {s: T - busy[s] for s in costs}
    gpus = {st.id: st.tp * st.cp for st in plan.stages}
    total = sum(gpus.values())
    bubble = 1.0 - sum(busy[s] * gpus[s] for s in costs) / (T * total) if T > 0 else 0.0
    peak = {s: c.static_bytes + tr.max_inflight[s] * c.act_bytes + c.transient_bytes for s, c in costs.items()}
    return SimResult(iteration_s=T, busy_s=busy, idle_s=idle, dp_sync_s=sync, peak_mem=peak,
                     bubble_fraction=bubble, stage_gpus=gpus, trace=tr, schedule=sched,
                     mem_limit=cluster.gpu.memory_bytes)
