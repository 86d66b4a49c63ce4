"""Iteration time–energy frontier of a computation DAG (Phillips–Dessouky iterative min cut).

Problem. Each computation i runs for an integer duration d_i (units of τ) on its convex
time–cost curve (hull.py); the iteration time T is the longest path. Every GPU is busy or
blocked for T, so the iteration energy is

    E(T) = Σ_i e′_i(d_i) + T · Σ_r P_r,        e′ = e − P_r·t  (Perseus's effective energy),

and the frontier is min E over durations with longest path ≤ T, for every T from the
minimum-energy schedule (all computations at their cheapest clock, time T_max) down to the
shortest iteration T_min.

Method (Phillips & Dessouky 1977, as Perseus/lowtime use it). Start at T_max. Repeatedly:
1. earliest/latest times give the critical sub-DAG (zero total float);
2. each critical computation v is an edge v_in → v_out with flow bounds [lb, ub]:
   ub = cost per unit of speeding v up (∞ at its fastest clock or if fixed),
   lb = saving per unit of slowing v down (0 at its slowest clock or if fixed);
   dependencies are [0, ∞);
3. a minimum cut (maxflow.py) names the computations to speed up (S→T edges) and to slow down
   (T→S edges); its value Σ ub − Σ lb is the cheapest way to shorten every critical path by
   one unit. An unbounded cut means T_min is reached.

Where this differs from lowtime (and why it is fast):
- Costs are the exact convex piecewise-linear hull, not an exponential fit, so between two
  hull vertices every per-unit cost is constant and the same cut stays optimal. We therefore
  apply one cut for k units at once (a *phase*), k = the distance to the next vertex of any
  moved computation, cut short where another path becomes critical. lowtime recomputes the
  critical DAG and two max flows for every single unit of τ.
- Where another path becomes critical is found exactly: the makespan after j units, M(j), is
  convex in j (a maximum of linear functions), so {j : M(j) ≤ T − j} is an interval and a
  binary search over j finds its end.
- Infinity is a real float infinity, infeasible flows raise/stop with a typed reason instead
  of a panic, and nothing is mutated in place: the frontier keeps one duration snapshot per
  phase and materializes any point on demand.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from typing import Iterator

from .dag import ComputationDAG, Option
from .hull import Curve, build_curve
from .maxflow import INF, BoundedFlow, InfeasibleFlow


class FrontierError(RuntimeError):
    """The frontier cannot be computed or a point outside it was asked for."""


@dataclass(frozen=True)
class FrontierPoint:
    """One plan of the frontier: a clock per computation for iteration time ``units``·τ."""

    units: int
    iteration_time_s: float  # the label: real iteration time is ≤ this (times rounded up)
    options: tuple[Option, ...]  # per DAG node
    energy_j: float  # Σ e_i + Σ_r P_r·(T − busy_r) at T = iteration_time_s
    compute_energy_j: float  # Σ e_i
    effective_cost_j: float  # Σ e′_i (Perseus's "effective cost"; energy = this + T·ΣP_r)


@dataclass
class _Phase:  # mutable: a phase's length is corrected after the fact (see solve_frontier)
    start_units: int  # makespan bound at the start of the phase
    durations: array  # snapshot at the start (array of C ints: 4 bytes per computation per phase)
    faster: tuple[int, ...]
    slower: tuple[int, ...]
    steps: int  # units applied
    end_units: int  # makespan after the phase (≤ start_units − steps)
    cut_value: float  # Δ effective cost per unit


@dataclass
class Frontier:
    dag: ComputationDAG
    unit_s: float
    curves: list[Curve]
    phases: list[_Phase]
    final_durations: list[int]
    t_max_units: int
    t_min_units: int  # reached by the solver (equals the all-fastest makespan unless it stopped)
    stop_reason: str
    total_blocking_w: float = field(init=False)

    def __post_init__(self) -> None:
        self.total_blocking_w = self.dag.total_blocking_power()
        # phase ends ascending (phases run from slow to fast), to find a label's phase by bisection
        self._ends_ascending = [ph.end_units for ph in reversed(self.phases)]

    # ---- the frontier's labels ------------------------------------------------------------
    def labels(self) -> range:
        """Iteration times (units of τ) of the frontier, slowest (least energy) first."""
        return range(self.t_max_units, self.t_min_units - 1, -1)

    @property
    def t_star_s(self) -> float:
        """T*: the slow end. Every computation runs at its cheapest clock in effective energy,
        so a pipeline that must wait longer (a straggler) gains nothing by slowing further."""
        return self.t_max_units * self.unit_s

    def min_energy_units(self) -> int:
        """Iteration time with the least energy when nobody waits for a straggler.

        E(T) = Σe′ + T·ΣP is linear inside each phase, so only phase ends are candidates.
        """
        cands = {self.t_max_units, self.t_min_units}
        for ph in self.phases:
            cands.add(ph.start_units)
            cands.add(max(ph.start_units - ph.steps, self.t_min_units))
        return min(cands, key=lambda u: (self.hull_cost(u) + u * self.unit_s * self.total_blocking_w, -u))

    @property
    def t_min_s(self) -> float:
        return self.t_min_units * self.unit_s

    def durations_at(self, units: int) -> list[int]:
        if not (self.t_min_units <= units <= self.t_max_units):
            raise FrontierError(f"iteration time {units}·τ is outside the frontier "
                                f"[{self.t_min_units}, {self.t_max_units}]·τ (τ = {self.unit_s:g} s)")
        # phase i covers (end_units, start_units]; its end equals the next phase's start.
        # The phase for `units` is the slowest one whose end is below it.
        i = bisect.bisect_left(self._ends_ascending, units)  # phases (from the fast end) with end < units
        if i == 0:
            return list(self.final_durations)
        ph = self.phases[len(self.phases) - i]
        j = min(ph.steps, ph.start_units - units)
        d = list(ph.durations)
        for v in ph.faster:
            d[v] -= j
        for v in ph.slower:
            d[v] += j
        return d

    def point(self, units: int) -> FrontierPoint:
        d = self.durations_at(units)
        opts = tuple(c.option_for(x) for c, x in zip(self.curves, d))
        t = units * self.unit_s
        e_comp = sum(o.energy_j for o in opts)
        energy = self.dag.energy(opts, iteration_time_s=t)
        return FrontierPoint(units, t, opts, energy, e_comp, energy - t * self.total_blocking_w)

    def points(self) -> Iterator[FrontierPoint]:
        for u in self.labels():
            yield self.point(u)

    def hull_cost(self, units: int) -> float:
        """Σ e′ on the convex hulls (the solver's own objective) at ``units``."""
        return sum(c.cost(x) for c, x in zip(self.curves, self.durations_at(units)))


class _Graph:
    """Topological order and adjacency, computed once."""

    def __init__(self, dag: ComputationDAG) -> None:
        self.preds, self.succs = dag.adjacency()
        self.topo = dag.topological_order()
        self.rtopo = self.topo[::-1]

    def makespan(self, d: list[int]) -> int:
        preds = self.preds
        ef = [0] * len(d)
        for v in self.topo:
            ps = preds[v]
            if ps:
                m = ef[ps[0]]
                for p in ps:
                    if ef[p] > m:
                        m = ef[p]
                ef[v] = m + d[v]
            else:
                ef[v] = d[v]
        return max(ef)

    def times(self, d: list[int]) -> tuple[list[int], list[int], int]:
        preds, succs = self.preds, self.succs
        n = len(d)
        es = [0] * n
        ef = [0] * n
        for v in self.topo:
            ps = preds[v]
            s = 0
            for p in ps:
                if ef[p] > s:
                    s = ef[p]
            es[v] = s
            ef[v] = s + d[v]
        t = max(ef)
        ls = [0] * n
        for v in self.rtopo:
            f = t
            for w in succs[v]:
                if ls[w] < f:
                    f = ls[w]
            ls[v] = f - d[v]
        return es, ls, t


def _bounds(c: Curve, d: int) -> tuple[float, float, int, int]:
    """(lb, ub, max units it may slow, max units it may speed up) for duration d on curve c."""
    hu, hc = c.hull_units, c.hull_costs
    if len(hu) == 1:
        return 0.0, INF, 0, 0
    # j: last vertex ≤ d
    lo, hi = 0, len(hu) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if hu[mid] <= d:
            lo = mid
        else:
            hi = mid - 1
    j = lo
    if hu[j] == d:
        if j == 0:
            ub, speed = INF, 0
        else:
            ub, speed = (hc[j - 1] - hc[j]) / (hu[j] - hu[j - 1]), d - hu[j - 1]
        if j == len(hu) - 1:
            lb, slow = 0.0, 0
        else:
            lb, slow = (hc[j] - hc[j + 1]) / (hu[j + 1] - hu[j]), hu[j + 1] - d
    else:  # strictly inside segment j
        s = (hc[j] - hc[j + 1]) / (hu[j + 1] - hu[j])
        lb, ub, slow, speed = s, s, hu[j + 1] - d, d - hu[j]
    return lb, ub, slow, speed


def _slopes(c: Curve) -> list[float]:
    hu, hc = c.hull_units, c.hull_costs
    return [(hc[j] - hc[j + 1]) / (hu[j + 1] - hu[j]) for j in range(len(hu) - 1)]


def solve_frontier(dag: ComputationDAG, unit_time_s: float = 1e-4, simplify: float = 0.0,
                   max_phases: int = 1_000_000, warm_start: bool = True) -> Frontier:
    """Time–energy frontier of ``dag`` from the minimum-energy plan to the shortest iteration.

    ``unit_time_s`` is τ, the time resolution (the number of phases depends on the clocks, not
    on τ, so a fine τ costs little); ``simplify`` (e.g. 0.002) lets each computation's hull
    deviate by that share of its energy to cut the number of phases (see hull.py).
    ``warm_start`` starts each phase's max flow from the previous phase's flow (a cut applied
    for k units keeps that flow feasible, so few augmentations remain); off = textbook cold start.
    """
    dag.validate()
    g = _Graph(dag)
    n = len(dag.nodes)
    succs = g.succs
    power = dag.blocking_power_w
    curves = [build_curve(node.options, power[node.rank], unit_time_s, simplify) for node in dag.nodes]
    d = [c.max_units for c in curves]
    t_floor = g.makespan([c.min_units for c in curves])
    phases: list[_Phase] = []
    stop = "reached the shortest iteration"
    t_max = None
    bnd = [_bounds(c, x) for c, x in zip(curves, d)]  # (lb, ub, may slow, may speed) per node
    finite = [b for c in curves for b in _slopes(c)]
    eps = 1e-9 * max(max(finite, default=1.0), 1e-12)
    state: BoundedFlow | None = None  # the last phase's flow network (warm start)
    prev_sig: tuple = ()
    prev_keys: list[tuple[int, int]] = []
    moved: list[int] = []
    pending = False  # the last phase was applied for its full length unverified

    def apply(faster: list[int], slower: list[int], k: int) -> None:
        for v in faster:
            d[v] -= k
        for v in slower:
            d[v] += k

    while True:
        es, ls, t = g.times(d)
        if pending:
            # A phase is applied for its full length k optimistically; the next critical-path
            # pass (needed anyway) checks that the iteration really shrank by k. Rarely it did
            # not (another path became critical first): undo and binary-search the length.
            ph = phases[-1]
            pending = False
            if t > ph.start_units - ph.steps:
                apply(list(ph.faster), list(ph.slower), -ph.steps)
                step = _advance(g, d, ph.start_units, list(ph.faster), list(ph.slower), bnd, ph.steps - 1)
                if step is None:  # slowing made another path critical at once: shorten only
                    ph.slower = ()
                    step = _advance(g, d, ph.start_units, list(ph.faster), [], bnd, None)
                if step is None:
                    phases.pop()
                    stop = f"could not shorten the iteration below {ph.start_units}·τ"
                    break
                ph.steps = step
                ph.cut_value = sum(bnd[v][1] for v in ph.faster) - sum(bnd[v][0] for v in ph.slower)
                apply(list(ph.faster), list(ph.slower), step)
                moved = list(ph.faster) + list(ph.slower)
                es, ls, t = g.times(d)
            for v in moved:
                bnd[v] = _bounds(curves[v], d[v])
            ph.end_units = t
        if t_max is None:
            t_max = t
        if t <= t_floor:
            break
        if len(phases) >= max_phases:
            stop = f"stopped after max_phases={max_phases}"
            break
        # ---- critical sub-DAG; rebuilt as a flow network only when it changed -------------
        crit = [v for v in range(n) if es[v] == ls[v]]
        crit_edges = [(v, w) for v in crit for w in succs[v] if es[w] == ls[w] and es[w] == es[v] + d[v]]
        sig = (crit, crit_edges, [v for v in crit if es[v] == 0], [v for v in crit if es[v] + d[v] == t])
        idx = [-1] * n
        for k, v in enumerate(crit):
            idx[v] = k  # op edge of crit[k] is edge k; its nodes v_in = 2+2k, v_out = 3+2k
        reuse = warm_start and state is not None and sig == prev_sig
        if reuse:
            for v in moved:
                if not state.set_bounds(idx[v], bnd[v][0], bnd[v][1]):
                    reuse = False
                    break
        try:
            if not reuse:
                edges = [(2 + 2 * k, 3 + 2 * k, bnd[v][0], bnd[v][1]) for k, v in enumerate(crit)]
                edges += [(0, 2 + 2 * idx[v], 0.0, INF) for v in sig[2]]
                edges += [(3 + 2 * idx[v], 1, 0.0, INF) for v in sig[3]]
                edges += [(3 + 2 * idx[v], 2 + 2 * idx[w], 0.0, INF) for v, w in crit_edges]
                # keys name edges in DAG ids, to carry flows over when the network changes
                keys = [(v, v) for v in crit] + [(-1, v) for v in sig[2]] + [(v, -2) for v in sig[3]] + crit_edges
                start = None
                if warm_start and state is not None:
                    old = dict(zip(prev_keys, state.flows()))
                    start = [old.get(key, 0.0) for key in keys]
                state = BoundedFlow(2 + 2 * len(crit), edges, 0, 1, eps, start)
                prev_keys = keys
            side, unbounded = state.min_cut()
        except InfeasibleFlow as e:
            stop = f"no feasible flow at T={t}·τ ({e}); frontier ends here"
            break
        prev_sig = sig
        if unbounded:
            stop = "reached the shortest iteration (no finite cut)"
            break
        faster = [v for k, v in enumerate(crit) if side[2 + 2 * k] and not side[3 + 2 * k]]
        slower = [v for k, v in enumerate(crit) if side[3 + 2 * k] and not side[2 + 2 * k] and bnd[v][2] > 0]
        if not faster or any(bnd[v][3] == 0 for v in faster):
            stop = "reached the shortest iteration (cut needs a computation at its fastest clock)"
            break
        k = min([bnd[v][3] for v in faster] + [bnd[v][2] for v in slower])
        cut_value = sum(bnd[v][1] for v in faster) - sum(bnd[v][0] for v in slower)
        phases.append(_Phase(t, array("i", d), tuple(faster), tuple(slower), k, t - k, cut_value))
        apply(faster, slower, k)
        moved = faster + slower
        pending = True
    t_end = g.makespan(d)
    return Frontier(dag, unit_time_s, curves, phases, d, t_max if t_max is not None else t_end, t_end, stop)


def _advance(g: _Graph, d: list[int], t: int, faster: list[int], slower: list[int],
             info: list[tuple[float, float, int, int]], k_hi: int | None) -> int | None:
    """Largest k ≤ k_hi such that applying the cut k times shortens the iteration by ≥ k.

    The makespan after j units, M(j), is a maximum of linear functions of j, so M(j) + j is
    convex and {j : M(j) ≤ t − j} is an interval starting at 0: binary search. None if even one
    unit fails. ``k_hi`` None: the moved computations' distance to their next hull vertex.
    """
    k_max = min([info[v][3] for v in faster] + [info[v][2] for v in slower])
    if k_hi is not None:
        k_max = min(k_max, k_hi)

    def fits(j: int) -> bool:
        dd = list(d)
        for v in faster:
            dd[v] -= j
        for v in slower:
            dd[v] += j
        return g.makespan(dd) <= t - j

    lo, hi = 0, k_max  # lo fits (0 trivially); search the largest fitting j in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo or None
