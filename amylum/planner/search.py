"""Outer search: per-module pipeline stages and TP, placement, microbatching, DP.

For every microbatch size, checkpointing choice and LLM (tp, stages), each chain is partitioned
optimally (partition.py). Modality-parallel plans give each branch its own stages; for each branch
only the Pareto front of (GPUs, bottleneck time) over its (tp, stages) is kept, so combining
branches stays small. Colocated plans put the branches at the head of the LLM's chain. Each
combination gets DP = ⌊world / GPUs per replica⌋ and an analytic 1F1B estimate
(m − 1)·max stage + longest path + DP sync; the best few are simulated with the real schedule and
the fastest one that fits in memory wins. Memory is checked per stage in the partition (with an
estimate of DP) and again, exactly, in the simulation.

Shared DP: every replica holds all modules (as in Cornstarch), so DP is one degree for the model;
per-module DP would need microbatch re-routing between modules and is not searched.

Context parallelism: for long sequences (``cp_min_tokens``) the LLM's chain is also tried at
each CP degree of ``cp_choices``; every stage of that chain then uses tp × cp GPUs per replica.
The cost model prices it from the CP token assignment's balance on the sequence's mask
(``cp_cost.cp_imbalance``) and the K/V all-gather per layer (cost.py).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace

from .cost import CostModel, StageCost, grad_needs
from .cp_cost import cp_imbalance
from .partition import ChainSolver
from .candidates import (ChainOption, balanced_variant, build_plan, chain_layers, even_option, replica_dims,
                         template_options)
from .plan import Plan
from .simulate import SimResult, prescreen, simulate
from .validate import check_schedule
from .spec import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class SearchOptions:
    tp_choices: tuple[int, ...] = (1, 2, 4, 8)
    mb_choices: tuple[int, ...] = (1, 2)
    llm_pp_choices: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40)
    branch_pp_max: int = 8
    placements: tuple[str, ...] = ("modality_parallel", "colocated")
    checkpointing: tuple[bool, ...] = (False, True)
    schedule: str = "1f1b"
    pareto_points: int = 6  # per branch, nearest the LLM's bottleneck
    simulate_top: int = 16  # candidates that fit in memory to simulate, best estimates first
    spare_factor: int = 4  # estimates kept per simulated slot
    # layer-balanced variants of the best estimates: the partition is optimal for the analytic
    # objective, the simulator (the judge) also sees transfers, joins and DP sync
    balanced_top: int = 16
    # rule-based candidates, all simulated, so the search space holds the usual hand rules:
    # colocated with an even LLM split at every (TP, stage count) and modality-parallel
    # templates (LLM stages, stages per encoder) with one TP and even splits
    rule_candidates: bool = True
    templates: tuple[tuple[int, int], ...] = ((4, 2), (5, 1), (2, 1), (4, 1), (8, 1))
    # re-simulate the best 1F1B plans with the zero-bubble order (W split; zerobubble.py)
    zero_bubble: bool = True
    zb_top: int = 6
    # context parallelism of the LLM, tried when its sequence has at least cp_min_tokens tokens
    # per sample. Every CP degree adds LLM partitions to solve; with CP tried at any length the
    # 1,024-GPU searches of bench/planner.py take 2.6–10.9 s CPU (instead of 1.1–2.8 s) for
    # 1–9 % faster plans, so shorter sequences are left to DP/TP/PP unless asked for. cp_intervals: (lo, hi) of a representative mask for the
    # balance (default: causal rows)
    cp_choices: tuple[int, ...] = (1, 2, 4, 8)
    cp_min_tokens: int = 16384
    # skip an LLM option before partitioning it when no estimate built on it can enter the heap
    # (changes no result; off: solve every partition, to check exactly that)
    llm_bound: bool = True
    cp_intervals: tuple | None = field(default=None, compare=False, hash=False)


@dataclass
class SearchResult:
    plan: Plan
    sim: SimResult
    seconds: float
    partitions: int  # chain partitions solved
    estimated: int  # combinations estimated analytically
    simulated: int
    rejected_memory: int = 0
    notes: list[str] = field(default_factory=list)
    # the best plan without a W split (what an executor that runs B as the whole backward
    # realises); the same as plan/sim when the winner is a 1F1B plan
    plan_1f1b: Plan | None = None
    sim_1f1b: SimResult | None = None


class _Ctx:
    """State of one search call (memo tables live here, never globally)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, global_batch: int, opts: SearchOptions, profile):
        self.model, self.cluster, self.B, self.opts, self.profile = model, cluster, global_batch, opts, profile
        self.needs = grad_needs(model)
        self.cps = llm_cp_choices(model, opts)
        imbalance = cp_imbalance(llm_sequence(model), self.cps, intervals=opts.cp_intervals) if self.cps != (1,) else {}
        self.cms = {ck: CostModel(cluster, profile, checkpointing=ck, cp_imbalance=imbalance)
                    for ck in opts.checkpointing}
        self.memo: dict = {}
        self.solvers: dict = {}
        self.per_layer: dict = {}
        self.partitions = 0

    def chain_layers(self, chain: str):
        return chain_layers(self.model, chain)

    def solver(self, chain: str, tp: int, mb: int, ck: bool, cp: int = 1):
        """Per-layer costs and segment matrices of a chain; independent of stage count and DP."""
        key = (chain, tp, mb, ck, cp)
        if key not in self.solvers:
            cm = self.cms[ck]
            layers = self.chain_layers(chain)
            times, cut, wg, opt, act, trans = [], [], [], [], [], []
            for i, l in enumerate(layers):
                nd = self.needs[l.name]
                f, b, w = cm.layer_times(l, nd, mb, tp, cp)
                times.append(f + b + w)
                s_wg, s_opt = cm.static_parts([l], self.needs, tp)
                wg.append(s_wg)
                opt.append(s_opt)
                act.append(cm.layer_act_bytes(l, nd, mb, tp, cp))
                trans.append(cm.layer_transient_bytes(l, mb, tp, cp))
                t = cm.p2p_time(mb * l.out_bytes / tp, inter=True)
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                if nxt is not None and self.needs[nxt.name].igrad:
                    t *= 2  # the gradient comes back across the same cut
                cut.append(t)
            per = [cm.stage_cost([l], self.needs, mb, tp, 1, cp) for l in layers]
            self.per_layer[key] = (per, wg, opt)
            self.solvers[key] = (layers, ChainSolver(times, cut, wg, act, trans, self.cluster.gpu.memory_bytes,
                                                     base_mem=self.cluster.reserved_bytes, optim_mem=opt))
        return self.solvers[key]

    def stage(self, chain: str, tp: int, mb: int, ck: bool, a: int, b: int, dp: int, cp: int = 1) -> StageCost:
        """Stage cost of layers [a, b) from the cached per-layer costs (same sums as stage_cost)."""
        per, wg, opt = self.per_layer[(chain, tp, mb, ck, cp)]
        seg = per[a:b]
        return StageCost(f=sum(c.f for c in seg), b=sum(c.b for c in seg), w=sum(c.w for c in seg),
                         act_bytes=sum(c.act_bytes for c in seg),
                         transient_bytes=max(c.transient_bytes for c in seg),
                         static_bytes=self.cluster.reserved_bytes + sum(wg[a:b]) + sum(opt[a:b]) / (dp * cp),
                         grad_bytes=sum(c.grad_bytes for c in seg), out_bytes=seg[-1].out_bytes,
                         has_bwd=any(c.has_bwd for c in seg), has_w=any(c.has_w for c in seg), cp=cp)

    def option(self, chain: str, tp: int, p: int, mb: int, ck: bool, offset: int = 0,
               other_gpus: int = 0, cp: int = 1) -> ChainOption | None:
        """Optimal partition of ``chain`` into ``p`` stages of ``tp`` GPUs.

        ``offset`` is the number of stages downstream of the chain (the LLM's, for a branch): it
        sets how many microbatches each stage keeps under 1F1B. DP and the microbatch count are
        not known until every chain is chosen, so the partition uses the DP this chain would get
        next to ``other_gpus`` GPUs per replica (an upper bound: optimistic optimizer sharding,
        re-checked exactly by the simulation, which rejects a plan that does not fit).
        """
        if ck and False in self.cms and self.option(chain, tp, p, mb, False, offset, other_gpus, cp) is not None:
            # checkpointing only trades time for memory: try it where the plain plan does not fit
            return None
        layers, solver = self.solver(chain, tp, mb, ck, cp)
        if not solver.has_act:
            offset = 0  # nothing is kept for backward: stage position does not change memory
        elif offset > 0:
            # round the downstream depth up to a power of two: more microbatches in flight than
            # the real schedule keeps, so memory stays safe, and far fewer distinct problems
            offset = 1 << (offset - 1).bit_length()
        key = (chain, tp, p, mb, ck, offset, other_gpus, cp)
        if key in self.memo:
            return self.memo[key]
        res = None
        world = self.cluster.world_size
        if p <= len(layers) and p * tp * cp + other_gpus <= world:
            dp, m = replica_dims(world, p * tp * cp + other_gpus, self.B, mb)
            self.partitions += 1
            # optimizer state is sharded over dp × cp ranks (CP ranks join the gradient reduction)
            part = solver.solve(_inflight(p, offset, m, self.opts.schedule), m, dp * cp)
            if part is not None:
                costs = [self.stage(chain, tp, mb, ck, a, b, dp, cp) for a, b in zip(part.bounds, part.bounds[1:])]
                res = ChainOption(chain, tp, p, part.bounds, costs, cp=cp)
        self.memo[key] = res
        return res


def llm_sequence(model: ModelSpec) -> int:
    """Tokens per sample the LLM attends over (its decoder layers' sequence)."""
    return max((l.tokens for l in model.llm if l.kv_bytes or l.kind.endswith(".decoder")), default=0)


def llm_cp_choices(model: ModelSpec, opts: SearchOptions) -> tuple[int, ...]:
    """CP degrees to try for the LLM: 1, plus ``opts.cp_choices`` for a long enough sequence."""
    if llm_sequence(model) < opts.cp_min_tokens:
        return (1,)
    return tuple(sorted({1, *opts.cp_choices}))


def _inflight(p: int, offset: int, m: int, schedule: str) -> tuple[int, ...]:
    if schedule == "gpipe":
        return tuple([m] * p)
    return tuple(min(m, p - s + offset) for s in range(p))


def _pareto(options: list[ChainOption]) -> list[ChainOption]:
    """Options not beaten on both GPUs and bottleneck."""
    front: list[ChainOption] = []
    for o in sorted(options, key=lambda o: (o.gpus, o.bottleneck)):
        if not front or o.bottleneck < front[-1].bottleneck:
            front.append(o)
    return front


def _nearest(front: list[ChainOption], target: float, k: int) -> list[ChainOption]:
    # keep the cheapest options that keep up with the LLM, plus the few just below/above it
    ranked = sorted(front, key=lambda o: abs(math.log(max(o.bottleneck, 1e-12) / max(target, 1e-12))))
    return ranked[:k]


def _estimate(opts: list[ChainOption], m: int, dp: int, cm: CostModel, llm_chain: str) -> float:
    w = [x for o in opts for x in o.w]
    branch_path = max([sum(o.w) for o in opts if o.chain != llm_chain], default=0.0)
    llm = next(o for o in opts if o.chain == llm_chain)
    path = branch_path + sum(llm.w)
    sync = max(cm.dp_sync_time(c, dp, o.tp) for o in opts for c in o.costs)
    return (m - 1) * max(w) + path + sync


def search(model: ModelSpec, cluster: ClusterSpec, global_batch: int, options: SearchOptions | None = None,
           profile=None) -> SearchResult:
    """The fastest plan (simulated) that fits in memory; raises ValueError when nothing fits."""
    t0 = time.perf_counter()
    opts = options or SearchOptions()
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    ctx = _Ctx(model, cluster, global_batch, opts, profile)
    world = cluster.world_size
    if tuple(opts.placements) == ("modality_parallel",) and model.branches and world < len(model.branches) + 1:
        # Not a memory question: each encoder branch and the LLM need a stage (a GPU) of their own.
        raise ValueError(f"no plan fits: a modality-parallel plan of {model.name} needs at least "
                         f"{len(model.branches) + 1} GPUs (one stage per encoder branch plus the LLM); got {world}. "
                         f"Use more GPUs or the colocated placement")
    tps = [t for t in opts.tp_choices if t <= cluster.gpus_per_node]
    cands: list[tuple[float, int, tuple]] = []  # heap of (-estimate, tiebreak, candidate), best kept
    estimated = 0
    stats_skipped = [0]  # LLM options skipped by the bound before their partition was solved

    def push(est, cand):
        nonlocal estimated
        estimated += 1
        item = (-est, estimated, cand)
        # keep spares: a candidate whose memory estimate was optimistic fails the exact check
        if len(cands) < opts.simulate_top * opts.spare_factor:
            heapq.heappush(cands, item)
        elif -est > cands[0][0]:
            heapq.heapreplace(cands, item)

    def dims(gpus_per_rep: int, mb: int):
        return replica_dims(world, gpus_per_rep, global_batch, mb)

    def cannot_enter(chain: str, tp: int, cp: int, p: int, mb: int, ck: bool, other: int) -> bool:
        """True when no plan built on this LLM option can enter the full heap of estimates.

        Any estimate with it is at least (m − 1)·T/p + T, T the chain's total work (the sum of
        its stages; the slowest of p stages has at least T/p), m at its smallest (the most DP
        the option leaves room for). Estimates only enter below the worst one kept, which only
        falls, so skipping the partition solve here changes no result; it is what keeps the
        CP degrees affordable in large searches.
        """
        if not opts.llm_bound or len(cands) < opts.simulate_top * opts.spare_factor:
            return False
        ctx.solver(chain, tp, mb, ck, cp)
        total = sum(c.total for c in ctx.per_layer[(chain, tp, mb, ck, cp)][0])
        dims_ = replica_dims(world, p * tp * cp + other, global_batch, mb)
        if dims_ is None:
            return True
        dp, m = dims_
        return (m - 1) * total / p + total > -cands[0][0] * (1 + 1e-9)

    for mb in opts.mb_choices:
        if mb > global_batch:
            continue
        for ck in opts.checkpointing:
            cm = ctx.cms[ck]
            for placement in opts.placements:
                llm_chain = "colocated" if placement == "colocated" else "llm"
                if placement == "colocated" and not model.branches:
                    continue
                n_llm = len(ctx.chain_layers(llm_chain))
                for tp, cp, p in ((tp, cp, p) for tp in tps for cp in ctx.cps for p in opts.llm_pp_choices):
                    if p > n_llm or p * tp * cp > world:
                        continue
                    # branches need at least one GPU each next to the LLM
                    other = 0 if placement == "colocated" else len(model.branches)
                    if cannot_enter(llm_chain, tp, cp, p, mb, ck, other):
                        stats_skipped[0] += 1
                        continue
                    llm = ctx.option(llm_chain, tp, p, mb, ck, 0, other, cp)
                    if llm is None:
                        continue
                    if placement == "colocated" or not model.branches:
                        dp, m = dims(llm.gpus, mb)
                        push(_estimate([llm], m, dp, cm, llm_chain), (placement, [llm], mb, ck))
                        continue
                    fronts = []
                    for br in model.branches:
                        bopts = []
                        for btp in tps:
                            for bp in range(1, min(opts.branch_pp_max, len(br.layers)) + 1):
                                o = ctx.option(br.name, btp, bp, mb, ck, p, 1)
                                if o is not None:
                                    bopts.append(o)
                        front = _nearest(_pareto(bopts), llm.bottleneck, opts.pareto_points)
                        if not front:
                            break
                        fronts.append(front)
                    if len(fronts) != len(model.branches):
                        continue
                    for combo in _product(fronts):
                        R = llm.gpus + sum(o.gpus for o in combo)
                        if R > world:
                            continue
                        dp, m = dims(R, mb)
                        push(_estimate(list(combo) + [llm], m, dp, cm, "llm"),
                             (placement, list(combo) + [llm], mb, ck))
    if not cands and not opts.rule_candidates:
        raise ValueError(f"no plan fits: model {model.name} on {world} x {cluster.gpu.name} "
                         f"({cluster.gpu.memory_bytes / 1e9:.0f} GB each) with global batch {global_batch}; "
                         f"every partition exceeded memory")
    res = _select(ctx, cands, tps, dims, t0, estimated)
    res.notes.append(f"{stats_skipped[0]} LLM options skipped by a lower bound before partitioning")
    return res


def _key(placement: str, chosen, mb: int, ck: bool) -> tuple:
    return placement, tuple((o.chain, o.tp, o.cp, o.bounds) for o in chosen), mb, ck


def rule_candidates(model: ModelSpec, opts: SearchOptions, tps, world: int, global_batch: int):
    """Hand-rule plans (even splits, one TP): the search must never do worse than these."""
    for mb in opts.mb_choices:
        if mb > global_batch:
            continue
        for tp in tps:
            for p in opts.llm_pp_choices:
                if model.branches and "colocated" in opts.placements:
                    o = even_option(model, "colocated", tp, p)
                    if o is not None and o.gpus <= world:
                        yield "colocated", [o], mb
                elif not model.branches:
                    o = even_option(model, "llm", tp, p)
                    if o is not None and o.gpus <= world:
                        yield "modality_parallel", [o], mb
            if model.branches and "modality_parallel" in opts.placements:
                for llm_p, enc_p in opts.templates:
                    chosen = template_options(model, llm_p, enc_p, tp)
                    if chosen is not None and sum(o.gpus for o in chosen) <= world:
                        yield "modality_parallel", chosen, mb


def _select(ctx: _Ctx, cands, tps, dims, t0: float, estimated: int) -> SearchResult:
    """Simulate the best estimates, their balanced variants and the rule-based plans; keep the best.

    Every plan is judged by the simulator. Checkpointing is tried only where the plain plan does
    not fit (it only trades time for memory). The best 1F1B plans are then re-simulated with the
    zero-bubble order, which wins only where the simulator says so.
    """
    model, cluster, opts, B = ctx.model, ctx.cluster, ctx.opts, ctx.B
    world = cluster.world_size
    ranked = [c for _neg, _i, c in sorted(cands, key=lambda c: -c[0])]
    seen: dict[tuple, str] = {}
    fitted: list[tuple[float, int, Plan, SimResult]] = []  # (iteration s, order, plan, sim)
    stats = {"simulated": 0, "rejected": 0, "pruned": 0}
    best_t = [math.inf]

    def run(placement: str, chosen, mb: int, ck: bool) -> str:
        """Judge one candidate (once): "fit", "nofit" (memory) or "pruned" (cannot win)."""
        key = _key(placement, chosen, mb, ck)
        if key in seen:
            return seen[key]
        dp, m = dims(sum(o.gpus for o in chosen), mb)
        plan = build_plan(model, chosen, placement, dp, mb, m, B, ck, opts.schedule)
        lb, fits = prescreen(plan, model, cluster, ctx.cms[ck])
        if not fits:
            stats["rejected"] += 1
            seen[key] = "nofit"
        elif lb >= best_t[0]:
            # its simulated time is at least lb: skipping it cannot lose the best plan
            stats["pruned"] += 1
            seen[key] = "pruned"
        else:
            sim = simulate(plan, model, cluster, ctx.profile, cost_model=ctx.cms[ck], validate=False)
            stats["simulated"] += 1
            if not sim.fits:  # prescreen's memory is exact for 1F1B; this guards a drift
                stats["rejected"] += 1
                seen[key] = "nofit"
                return "nofit"
            fitted.append((sim.iteration_s, len(fitted), plan, sim))
            best_t[0] = min(best_t[0], sim.iteration_s)
            seen[key] = "fit"
        return seen[key]

    def run_with_fallback(placement: str, chosen, mb: int) -> None:
        for ck in opts.checkpointing:
            if run(placement, chosen, mb, ck) != "nofit":
                return

    fits = 0
    for placement, chosen, mb, ck in ranked:
        if fits >= opts.simulate_top:
            break  # enough candidates that fit were simulated
        fits += run(placement, chosen, mb, ck) != "nofit"
    for placement, chosen, mb, ck in ranked[:opts.balanced_top]:
        even = balanced_variant(model, chosen)
        if even is not None:
            run_with_fallback(placement, even, mb)
    if opts.rule_candidates:
        for placement, chosen, mb in rule_candidates(model, opts, tps, world, B):
            run_with_fallback(placement, chosen, mb)
    if not fitted:
        if stats["rejected"] == 0:
            raise ValueError(f"no plan fits: model {model.name} on {world} x {cluster.gpu.name} "
                             f"({cluster.gpu.memory_bytes / 1e9:.0f} GB each) with global batch {B}; "
                             f"every partition exceeded memory")
        raise ValueError(f"no plan fits in memory after simulation: model {model.name} on {world} GPUs; "
                         f"{stats['rejected']} candidates exceeded {cluster.gpu.memory_bytes / 1e9:.0f} GB")
    fitted.sort(key=lambda x: (x[0], x[1]))
    best_t, _o, plan_1f1b, sim_1f1b = fitted[0]
    best, best_sim = plan_1f1b, sim_1f1b
    if opts.zero_bubble and opts.schedule == "1f1b":
        for _t, _o, plan, _sim in fitted[:opts.zb_top]:
            zb = replace(plan, schedule="zb", split_w=True)
            cm = ctx.cms[plan.checkpointing]
            if prescreen(zb, model, cluster, cm)[0] >= best_t:
                continue  # cannot beat the best found
            sim = simulate(zb, model, cluster, ctx.profile, cost_model=cm, validate=False)
            stats["simulated"] += 1
            if sim.fits and sim.iteration_s < best_t:
                best_t, best, best_sim = sim.iteration_s, zb, sim
    # candidates skip validation for speed; the returned schedules are checked here
    for plan, sim in {id(p): (p, s) for p, s in ((best, best_sim), (plan_1f1b, sim_1f1b))}.values():
        check_schedule(sim.schedule, plan.num_microbatches)
    return SearchResult(plan=_annotate(best, best_sim, world), sim=best_sim, seconds=time.perf_counter() - t0,
                        partitions=ctx.partitions, estimated=estimated, simulated=stats["simulated"],
                        rejected_memory=stats["rejected"], plan_1f1b=_annotate(plan_1f1b, sim_1f1b, world),
                        sim_1f1b=sim_1f1b, notes=[f"{stats['pruned']} candidates skipped by a lower bound"])


def _annotate(plan: Plan, sim: SimResult, world: int) -> Plan:
    return replace(plan, notes={"iteration_s": sim.iteration_s, "bubble_fraction": sim.bubble_fraction,
                                "peak_mem_gb": sim.max_peak_mem / 1e9, "gpus_used": plan.world_size,
                                "gpus_available": world})


def _product(fronts):
    if not fronts:
        yield ()
        return
    for o in fronts[0]:
        for rest in _product(fronts[1:]):
            yield (o,) + rest
