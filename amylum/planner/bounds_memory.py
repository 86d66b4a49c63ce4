"""A tighter lower bound on the iteration time: per plan shape, with memory, DP sync and fill.

``shape_lower_bound(model, cluster, global_batch)`` is, like ``bounds.lower_bound``, a time that
no plan of the search (``search.py``) or the baselines (``baselines.py``) beats in simulation
(``simulate.py``). The total-work bound lets every layer take its cheapest option on a perfect
share of the GPUs, even where that cannot fit in memory. This one enumerates every plan *shape*
those planners produce and relaxes only the split of layers into stages.

Plan shapes. A plan of the search or the baselines is: a placement (colocated: one chain, the
branches then the LLM; modality-parallel: one chain per branch plus the LLM's; the LLM alone for
a model without branches); per chain one TP degree, one CP degree (1 for a branch chain) and a
stage count p; one microbatch size mb and one checkpointing flag for the plan; DP = min(⌊world /
R⌋, max(1, ⌊B / mb⌋)) for R GPUs per replica, and m = ⌈B / (DP·mb)⌉ microbatches, so padding to
DP·m·mb ≥ B samples is paid (``search.dims``, ``baselines.baseline_plan``). TP, CP, mb and stage
counts come from both planners' grids (``SearchOptions``, ``BASELINE_*``, ``STAGE_COUNTS``);
``wide=True`` also takes every stage count 1..chain length and every DP ≤ ⌊world / R⌋.

Per stage s, three facts of the simulator bound T, the simulated iteration time:
(1) fill + busy + sync. s cannot start its first F before microbatch 0's forwards upstream of it
    are done (a RECV waits for its SEND; transfers take ≥ 0); then it runs F, B and W of all m
    microbatches on its own clock, and its DP all-reduce comes after its last action:
    T ≥ Fup(s) + m·(f+b+w)_s + sync_s, Fup(s) = forward time of the chain's layers before s.
    Any action order: 1F1B, GPipe, zero-bubble.
(2) drain. Every schedule runs B in microbatch order, each after its F, so the last B of s ends
    at ≥ Fup(s) + m·(f+b)_s; that microbatch's gradient then passes each upstream stage's B in
    turn: T ≥ Fup(s) + Bup(s) + m·(f+b)_s, Bup(s) = input-gradient time of the layers before s
    (B without W, so it holds under a W split). A stage upstream of one without backward has
    none either (the runtime relays gradients downstream of any backward, ``stage_graph``).
(3) memory. Every plan they return fits (``SimResult.fits``): reserved + weights and grads +
    optimizer state / (DP·CP) (ZeRO-1, ``CostModel.static_bytes``) + held × activations + the
    largest transient ≤ GPU memory, with the cost model's own per-layer bytes (checkpointing
    included). ``inflight="1f1b"`` (default): held = min(m, depth + 1), depth = stages
    downstream on the longest path, which is what the 1F1B lists hold; GPipe holds m ≥ it; and
    every zero-bubble plan the search returns is a fitted 1F1B plan re-ordered (``_select``), so
    its shape passed this very test. ``inflight="one"``: held = 1, valid for any schedule (e.g.
    a hand-written zero-bubble plan whose 1F1B twin would not fit).
A chain's stage i of p has depth p − 1 − i; a branch's stage j of p_b feeds the LLM stage with
the merge layer, whose index is ≤ merge_index, so its depth is ≥ p_b − j + max(0, p − 1 −
merge_index), p the LLM's stage count.

Why the result is a lower bound. For one chain shape, the least τ such that some contiguous
split into p stages (empty stages allowed: a superset of real splits) meets (1)–(3) with every
stage ≤ τ is at most the T of every plan of that shape. A split exists iff the greedy one does
(each stage takes layers while the tests pass), because every test is monotone: shrinking a
segment from either end never fails it (memory and sync only fall; moving the start one layer
later adds ≤ f (+ b) to the upstream sum and removes ≥ that from the busy term, m ≥ 1), and a
later stage index holds fewer microbatches. The least τ is bisected; the infeasible end of the
bracket is returned. A colocated or LLM-only shape's bound is that τ. A modality-parallel
shape's is the largest of: the LLM chain's τ; per branch, its least τ over the branch shapes
that fit in memory and in the GPUs left; and the average over used GPUs, Σ_chains width ×
(m·Σ(f+b+w) + one all-reduce of the chain's whole gradient) / ⌊world / DP⌋ (T ≥ every used GPU's
busy time; ≤ DP·⌊world / DP⌋ GPUs are used; per-stage all-reduces cost at least one of the
chain's total: same bandwidth term, latency paid at least once), each branch at its cheapest
shape that fits, for every DP the GPUs left to the branches allow. The bound is the least over
shapes; a shape with no split that fits is excluded, which forces large models to TP and
checkpointing. ``inf``: no shape fits at all.

Left out (each only lowers it): transfers between stages, the merge waiting on the branches'
forwards, steady-state bubbles beyond one microbatch's fill and drain, limits on zero-bubble W
placement, CP imbalance (balanced unless ``cp_imbalance`` is given). Not covered: a TP or CP per
stage rather than per chain, microbatch sizes other than ``mb_choices``; ``bounds.lower_bound``
covers any plan.

Cost: a greedy pass (linear in layers) per bisection step, for the shapes whose average (also a
bound) is below the best found so far: 0.03–1.2 s per grid cell of bench/planner.py, a few
seconds with ``wide``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .baselines import BASELINE_MB, BASELINE_TP, STAGE_COUNTS
from .candidates import chain_layers, replica_dims
from .cost import GRAD_BYTES, CostModel, grad_needs
from .search import SearchOptions, llm_cp_choices
from .spec import ClusterSpec, ModelSpec

INFLIGHT = ("1f1b", "one")
MEM_TOL = 1e-9  # relative slack on memory: the simulator sums the same bytes in another order
REL_TOL = 1e-6  # bisection precision; the bound returned is the bracket's infeasible end


@dataclass(frozen=True)
class ShapeBound:
    seconds: float  # lower bound on the iteration time of any plan of the planners' shapes
    shape: str  # the shape attaining it (e.g. "CO 8x8 dp1 mb1 ck")
    shapes: int  # shapes enumerated
    solved: int  # shapes whose split was bisected (the rest were cut off by their average)


class _Chain:
    """Per-layer costs of one chain at one (tp, cp, mb, checkpointing), as prefix sums."""

    def __init__(self, cm: CostModel, layers, needs, mb: int, tp: int, cp: int):
        self.n = len(layers)
        self.tp, self.cp = tp, cp
        F, Bk, TOT, WG, OPT, ACT, GR = ([0.0] for _ in range(7))
        self.trans = []
        for l in layers:
            nd = needs[l.name]
            f, b, w = cm.layer_times(l, nd, mb, tp, cp)
            wg, opt = cm.static_parts([l], needs, tp)
            for arr, v in ((F, f), (Bk, b), (TOT, f + b + w), (WG, wg), (OPT, opt),
                           (ACT, cm.layer_act_bytes(l, nd, mb, tp, cp)),
                           (GR, l.params / tp * GRAD_BYTES if nd.wgrad else 0.0)):
                arr.append(arr[-1] + v)
            self.trans.append(cm.layer_transient_bytes(l, mb, tp, cp))
        self.F, self.B, self.TOT, self.WG, self.OPT, self.ACT, self.GR = F, Bk, TOT, WG, OPT, ACT, GR


class _Split:
    """A chain at one DP degree and stage count: feasibility of τ and the least feasible τ."""

    def __init__(self, ch: _Chain, cm: CostModel, p: int, dp: int, m: int, held: list[int], mem_free: float):
        self.ch, self.p, self.m, self.held, self.mem_free = ch, p, m, held, mem_free
        self.shard = dp * ch.cp  # optimizer state is sharded over dp × cp ranks
        n_peers = dp * ch.cp
        inter = n_peers * ch.tp > cm.cluster.gpus_per_node
        self.sync = lambda g: cm.allreduce_time(g, n_peers, inter)
        n = ch.n
        # at τ ≥ top no time test can fail, only memory: every stage's (1) and (2) are below it
        self.top = (ch.F[n] + m * ch.TOT[n] + self.sync(ch.GR[n])) * (1 + 1e-6) + 1e-12
        self._in_memory: bool | None = None

    def fits(self, tau: float) -> bool:
        """Greedy: each stage takes as many layers as pass (1)–(3); True iff it covers the chain."""
        ch, m, sync = self.ch, self.m, self.sync
        F, Bk, TOT, WG, OPT, ACT, GR, trans = ch.F, ch.B, ch.TOT, ch.WG, ch.OPT, ch.ACT, ch.GR, ch.trans
        n, a = ch.n, 0
        for i in range(self.p):
            h = self.held[i]
            b, peak = a, 0.0
            up1, up2 = F[a], F[a] + Bk[a]
            while b < n:
                t = max(peak, trans[b])
                e = b + 1
                mem = WG[e] - WG[a] + (OPT[e] - OPT[a]) / self.shard + h * (ACT[e] - ACT[a]) + t
                if (mem > self.mem_free or up1 + m * (TOT[e] - TOT[a]) + sync(GR[e] - GR[a]) > tau
                        or up2 + m * (F[e] - F[a] + Bk[e] - Bk[a]) > tau):
                    break
                b, peak = e, t
            a = b
            if a == n:
                return True
        return False

    @property
    def in_memory(self) -> bool:
        """Whether any split fits in memory (at τ ≥ top only memory can fail)."""
        if self._in_memory is None:
            self._in_memory = self.fits(self.top)
        return self._in_memory

    def least(self, lo: float, hi: float = math.inf) -> float:
        """A lower bound on max(lo, τ*), τ* the least τ some split passes: ``inf`` if none fits in
        memory; ``lo`` if τ = lo passes; ≥ ``hi`` if τ = hi does not; else the bisection's
        infeasible end (below τ*)."""
        if not self.in_memory:
            return math.inf
        if self.fits(lo):
            return lo
        hi = min(hi, self.top)
        if lo >= hi or not self.fits(hi):  # τ* > max(lo, hi)
            return max(lo, hi)
        while hi - lo > REL_TOL * hi:
            mid = 0.5 * (lo + hi)
            if self.fits(mid):
                hi = mid
            else:
                lo = mid
        return lo


def _dps(R: int, world: int, B: int, mb: int, any_dp: bool) -> list[int]:
    """DP degrees a shape of R GPUs per replica gets: the planners' rule, or any that fits."""
    if R > world:
        return []
    return list(range(1, world // R + 1)) if any_dp else [replica_dims(world, R, B, mb)[0]]


class _Shapes:
    """Memo of chains and splits for one (model, cluster, batch)."""

    def __init__(self, model, cluster, B, profile, inflight, cp_imbalance, any_dp):
        self.model, self.cluster, self.B, self.inflight, self.any_dp = model, cluster, B, inflight, any_dp
        self.needs = grad_needs(model)
        self.cms = {ck: CostModel(cluster, profile, checkpointing=ck, cp_imbalance=cp_imbalance)
                    for ck in (False, True)}
        self.mem_free = cluster.gpu.memory_bytes * (1 + MEM_TOL) - cluster.reserved_bytes
        self.chains: dict = {}
        self.splits: dict = {}
        self.solved = 0

    def chain(self, name: str, tp: int, cp: int, mb: int, ck: bool) -> _Chain:
        key = (name, tp, cp, mb, ck)
        if key not in self.chains:
            self.chains[key] = _Chain(self.cms[ck], chain_layers(self.model, name), self.needs, mb, tp, cp)
        return self.chains[key]

    def split(self, name, tp, cp, mb, ck, p, dp, m, offset=0) -> _Split:
        """``offset``: 0 for a chain that ends at the sink; for a branch, see ``_mp_value``."""
        key = (name, tp, cp, mb, ck, p, dp, m, offset)
        if key not in self.splits:
            # stage i of p holds min(m, depth + 1) microbatches, depth = p - 1 - i + offset
            held = [1] * p if self.inflight == "one" else [min(m, p - i + offset) for i in range(p)]
            self.splits[key] = _Split(self.chain(name, tp, cp, mb, ck), self.cms[ck], p, dp, m, held, self.mem_free)
        return self.splits[key]

    def work(self, name, tp, cp, mb, ck, dp, m) -> float:
        """GPU-seconds of one replica of the chain (all its stages' GPUs): compute + DP sync."""
        ch = self.chain(name, tp, cp, mb, ck)
        inter = dp * cp * tp > self.cluster.gpus_per_node
        sync = self.cms[ck].allreduce_time(ch.GR[-1], dp * cp, inter)
        return tp * cp * (m * ch.TOT[-1] + sync)


def shape_lower_bound(model: ModelSpec, cluster: ClusterSpec, global_batch: int, *, profile=None,
                      inflight: str = "1f1b", options: SearchOptions | None = None,
                      cp_imbalance: dict[int, float] | None = None, wide: bool = False,
                      mb_choices: tuple[int, ...] | None = None) -> ShapeBound:
    """The least, over every plan shape of the search and the baselines, of a lower bound on
    that shape's simulated iteration time (see the module docstring); ``inf`` if no shape fits.

    ``options``: the search's options (default ``SearchOptions()``); their grids, joined with
    the baselines', set the shapes covered. ``wide``: also every other stage count (1 to the
    chain's length) and every DP degree up to ⌊world / R⌋, not only the planners' rule.
    ``mb_choices``: microbatch sizes (default: the planners' 1 and 2).
    """
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    if inflight not in INFLIGHT:
        raise ValueError(f"inflight must be one of {INFLIGHT}, got {inflight!r}")
    so = options or SearchOptions()
    world, B = cluster.world_size, global_batch
    tps = sorted({t for t in (*so.tp_choices, *BASELINE_TP) if t <= cluster.gpus_per_node})
    cps = llm_cp_choices(model, so)
    mbs = sorted(mb_choices or {*so.mb_choices, *BASELINE_MB})
    head = "colocated" if model.branches else "llm"  # the one-chain placement
    n_head = len(chain_layers(model, head))
    if wide:
        llm_ps = list(range(1, n_head + 1))
        br_ps = list(range(1, max((len(b.layers) for b in model.branches), default=1) + 1))
    else:  # 1, 2, 4, 8: the colocated baseline's stage counts
        llm_ps = sorted({*so.llm_pp_choices, *(t[0] for t in so.templates), *(c[0] for c in STAGE_COUNTS.values()),
                         1, 2, 4, 8})
        br_ps = sorted({*range(1, so.branch_pp_max + 1), *(t[1] for t in so.templates),
                        *(c[1] for c in STAGE_COUNTS.values())})
    S = _Shapes(model, cluster, B, profile, inflight, cp_imbalance, wide)

    # (average, kind, shape): the average is a bound too, so shapes are solved cheapest first and
    # only while their average is below the best bound found
    cands: list[tuple] = []
    for mb in mbs:
        for ck in (False, True):
            for tp in tps:
                for cp in cps:
                    for p in (p for p in llm_ps if p <= n_head):
                        for dp in _dps(p * tp * cp, world, B, mb, wide):
                            m = math.ceil(B / (dp * mb))
                            avg = S.work(head, tp, cp, mb, ck, dp, m) / (p * tp * cp)
                            cands.append((avg, "chain", (head, tp, cp, mb, ck, p, dp, m)))
    if model.branches:
        cands += _mp_candidates(model, S, world, B, mbs, tps, cps, llm_ps)
    cands.sort(key=lambda c: c[0])
    best, best_shape = math.inf, "none fits"
    for avg, kind, shape in cands:
        if avg >= best:
            break  # every later shape's bound is at least its average
        S.solved += 1
        if kind == "chain":
            v = S.split(*shape).least(avg, best)
        else:
            v = _mp_value(model, S, avg, best, shape, world, tps, br_ps)
        if v < best:
            best, best_shape = v, _describe(kind, shape)
    return ShapeBound(seconds=best * (1 - 1e-12), shape=best_shape, shapes=len(cands), solved=S.solved)


def _mp_candidates(model, S: _Shapes, world, B, mbs, tps, cps, llm_ps):
    """Modality-parallel shapes: (LLM tp, cp, p) × each DP degree that leaves every branch a GPU."""
    nb = len(model.branches)
    n_llm = len(model.llm)
    out = []
    for mb in mbs:
        for ck in (False, True):
            for tp in tps:
                for cp in cps:
                    for p in (p for p in llm_ps if p <= n_llm):
                        R_llm = p * tp * cp
                        # the DP of every replica width R the branches may bring it to
                        dps = {dp for R in range(R_llm + nb, world + 1) for dp in _dps(R, world, B, mb, S.any_dp)}
                        for dp in sorted(dps):
                            m = math.ceil(B / (dp * mb))
                            # cheapest branch work at any TP (feasibility is checked when solved)
                            brw = sum(min(S.work(b.name, t, 1, mb, ck, dp, m) for t in tps) for b in model.branches)
                            avg = (S.work("llm", tp, cp, mb, ck, dp, m) + brw) / (world // dp)
                            out.append((avg, "mp", (tp, cp, mb, ck, p, dp, m)))
    return out


def _mp_value(model, S: _Shapes, avg, best, shape, world, tps, br_ps) -> float:
    """Bound of one modality-parallel shape (≥ ``best`` when it cannot win).

    The LLM's τ; each branch's least τ over its stage shapes that fit in memory and in the GPUs
    left (R ≤ ⌊world / DP⌋ less the other branches' smallest fit); and the GPU-seconds average
    with each branch at its cheapest such shape.
    """
    tp, cp, mb, ck, p, dp, m = shape
    budget = world // dp - p * tp * cp  # GPUs per replica left for the branches
    # branch stage j of p_b: depth ≥ (p_b - 1 - j) + 1 + (LLM stages after the merge stage)
    offset = 1 + max(0, p - 1 - model.merge_index)
    fit: dict[str, list] = {}
    for b in model.branches:
        opts = []
        for btp in tps:
            for bp in (q for q in br_ps if q <= len(b.layers) and q * btp <= budget):
                sp = S.split(b.name, btp, 1, mb, ck, bp, dp, m, offset)
                if sp.in_memory:
                    opts.append((bp * btp, sp, S.work(b.name, btp, 1, mb, ck, dp, m)))
        if not opts:
            return math.inf
        fit[b.name] = opts
    need = {b: min(g for g, _s, _w in o) for b, o in fit.items()}
    work = S.work("llm", tp, cp, mb, ck, dp, m)
    for b, opts in fit.items():
        room = budget - sum(g for c, g in need.items() if c != b)
        usable = [o for o in opts if o[0] <= room]
        if not usable:
            return math.inf
        fit[b] = usable
        work += min(w for _g, _s, w in usable)
    v = max(avg, work / (world // dp))
    if v >= best:
        return v
    v = max(v, S.split("llm", tp, cp, mb, ck, p, dp, m).least(v, best))
    for opts in fit.values():
        if v >= best:
            break
        v = max(v, min(sp.least(v, best) for _g, sp, _w in opts))
    return v


def _describe(kind: str, shape) -> str:
    if kind == "chain":
        name, tp, cp, mb, ck, p, dp, _m = shape
        tag = "CO" if name == "colocated" else "LLM"
    else:
        tp, cp, mb, ck, p, dp, _m = shape
        tag = "MP llm"
    return f"{tag} {p}x{tp}{f' cp{cp}' if cp > 1 else ''} dp{dp} mb{mb}{' ck' if ck else ''}"
