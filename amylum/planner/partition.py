"""Optimal contiguous partition of a chain of layers into pipeline stages.

Objective (1F1B with m microbatches, Oobleck's T1+T2+T3 with the bottleneck term made exact for
a chain): T = (m − 1) · max_s w_s + Σ_s w_s, where w_s is stage s's per-microbatch time (its layers'
forward + backward + the transfer at its cut). Each stage must fit in memory, and how many
microbatches it holds depends on its position (stage s of p keeps p − s + offset in flight under
1F1B), so feasibility is per stage index.

Exact algorithm ("enumerate the bottleneck"): a DP gives the smallest achievable bottleneck c0.
For each candidate cap c ≥ c0 (the distinct segment costs, ascending), a second DP gives the
least total Σ w under max ≤ c; T = (m − 1)·max + Σ. Any partition whose bottleneck is ≥ c costs
at least (m − 1)·c + Σ(layer times) + (the p − 1 cheapest cuts), so the scan stops once that
bound reaches the best T found; with equal cut costs it stops after the first cap.
Both DPs are vectorised over the split point, O(p·n²) each.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

INF = float("inf")


@dataclass(frozen=True)
class ChainProblem:
    times: tuple[float, ...]  # per-layer time per microbatch
    cut_cost: tuple[float, ...]  # extra time for a stage that ends after layer j (transfer), len n
    static_mem: tuple[float, ...]  # per-layer bytes independent of microbatches
    act_mem: tuple[float, ...]  # per-layer bytes per in-flight microbatch
    transient_mem: tuple[float, ...]  # per-layer working set (a stage needs the largest of its layers)
    inflight: tuple[int, ...]  # microbatches held by stage index s, len p
    mem_limit: float
    m: int  # microbatches per iteration
    base_mem: float = 0.0  # per-stage constant (reserved memory)

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def p(self) -> int:
        return len(self.inflight)


@dataclass(frozen=True)
class Partition:
    bounds: tuple[int, ...]  # stage s holds layers [bounds[s], bounds[s+1])
    stage_times: tuple[float, ...]
    objective: float

    @property
    def bottleneck(self) -> float:
        return max(self.stage_times)


def objective(stage_times, m: int) -> float:
    return (m - 1) * max(stage_times) + sum(stage_times)


class ChainSolver:
    """Segment matrices of one chain, built once and reused for every stage count.

    Static memory is split into a part that does not depend on DP and an optimizer part that is
    sharded over DP, so one solver serves every DP degree. Memo tables live on the instance.
    """

    def __init__(self, times, cut_cost, static_mem, act_mem, transient_mem, mem_limit: float,
                 base_mem: float = 0.0, optim_mem=None):
        n = len(times)
        self.n, self.mem_limit, self.base_mem = n, mem_limit, base_mem
        self.lower_sum = float(sum(times))
        t = np.concatenate([[0.0], np.cumsum(times)])
        i = np.arange(n + 1)[:, None]
        j = np.arange(n + 1)[None, :]
        self.valid = j > i
        cut = np.concatenate([[0.0], np.asarray(cut_cost, dtype=float)])
        cut[n] = 0.0  # the chain's last stage hands off outside this problem
        self.cut_sorted = np.sort(cut[1:n])

        def seg(x):
            c = np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=float))])
            return np.where(self.valid, c[j] - c[i], 0.0)

        self.W = np.where(self.valid, t[j] - t[i] + cut[j], INF)
        self.S = seg(static_mem)
        self.O = seg(optim_mem if optim_mem is not None else [0.0] * n)
        self.A = seg(act_mem)
        self.has_act = bool(np.any(self.A > 0))
        T = np.zeros((n + 1, n + 1))
        tr = np.asarray(transient_mem, dtype=float)
        for a in range(n):
            T[a, a + 1:] = np.maximum.accumulate(tr[a:])
        self.T = T
        vals = np.unique(self.W[np.isfinite(self.W)])
        self.caps = vals
        self._masks: dict = {}

    def mask(self, k: int, dp: int = 1):
        key = (k if self.has_act else 0, dp)
        if key not in self._masks:
            mem = self.base_mem + self.S + self.O / dp + key[0] * self.A + self.T
            self._masks[key] = self.valid & (mem <= self.mem_limit)
        return self._masks[key]

    def solve(self, inflight: tuple[int, ...], m: int, dp: int = 1) -> "Partition | None":
        """The partition minimising (m−1)·max + Σ under the memory limits; None if none fits."""
        n, p = self.n, len(inflight)
        if p < 1 or p > n:
            return None
        W = self.W
        feas = [self.mask(k, dp) for k in inflight]
        c0 = _bottleneck_dp(W, feas, p, n)
        if not np.isfinite(c0):
            return None
        # every partition has p-1 cuts at distinct places: layer times + the p-1 cheapest cuts
        # bound its total from below (exact when cuts cost the same, as in a uniform stack)
        min_sum = self.lower_sum + float(np.sum(self.cut_sorted[:p - 1]))
        caps = [INF] if m <= 1 else self.caps[np.searchsorted(self.caps, c0 * (1 - 1e-12)):]
        best: Partition | None = None
        for cap in caps:
            if best is not None and (m - 1) * cap + min_sum >= best.objective * (1 - 1e-12):
                break
            bounds = _minsum_dp(W, feas, p, n, float(cap))
            if bounds is None:
                continue
            times = tuple(float(W[bounds[s], bounds[s + 1]]) for s in range(p))
            obj = objective(times, m)
            if best is None or obj < best.objective:
                best = Partition(bounds, times, obj)
        return best


def _bottleneck_dp(W, feas, p: int, n: int) -> float:
    # after s+1 stages the prefix ends at j in [s+1, n-p+s+1]; stage s starts at i in [s, n-p+s]
    # the previous stage's window of prefix ends is exactly this stage's window of starts
    width = n - p + 1
    best = _pad(np.array([0.0]), width)
    for s in range(p):
        rows, cols = slice(s, s + width), slice(s + 1, s + 1 + width)
        Ws = np.where(feas[s][rows, cols], W[rows, cols], INF)
        best = np.maximum(best[:, None], Ws).min(axis=0)
    return float(best[-1])


def _pad(first: np.ndarray, width: int) -> np.ndarray:
    # before the first stage only the empty prefix (index 0) exists
    out = np.full(width, INF)
    out[0] = first[0]
    return out


def _minsum_dp(W, feas, p: int, n: int, cap: float):
    width = n - p + 1
    best = _pad(np.array([0.0]), width)
    arg = []
    cols_idx = np.arange(width)
    for s in range(p):
        rows, cols = slice(s, s + width), slice(s + 1, s + 1 + width)
        Wb = W[rows, cols]
        Ws = np.where(feas[s][rows, cols] & (Wb <= cap), Wb, INF)
        cand = best[:, None] + Ws
        a = cand.argmin(axis=0)
        best = cand[a, cols_idx]
        arg.append(a + s)  # back to absolute start index
    if not np.isfinite(best[-1]):
        return None
    bounds = [n]
    for s in range(p - 1, -1, -1):
        j = bounds[-1] - (s + 1)  # column of the prefix end within stage s's window
        bounds.append(int(arg[s][j]))
    return tuple(reversed(bounds))


def optimal_partition(pr: ChainProblem) -> Partition | None:
    """The partition minimising (m−1)·max + Σ under the memory limits; None if none fits."""
    solver = ChainSolver(pr.times, pr.cut_cost, pr.static_mem, pr.act_mem, pr.transient_mem,
                         pr.mem_limit, pr.base_mem)
    return solver.solve(pr.inflight, pr.m)


def stage_fits(pr: ChainProblem, s: int, a: int, b: int) -> bool:
    mem = (pr.base_mem + sum(pr.static_mem[a:b]) + pr.inflight[s] * sum(pr.act_mem[a:b])
           + max(pr.transient_mem[a:b]))
    return mem <= pr.mem_limit


def stage_time(pr: ChainProblem, a: int, b: int) -> float:
    return sum(pr.times[a:b]) + (pr.cut_cost[b - 1] if b < pr.n else 0.0)


def brute_force_partition(pr: ChainProblem) -> Partition | None:
    """Reference: every composition of n layers into p non-empty stages (tests only; exponential)."""
    n, p = pr.n, pr.p
    best = None
    for cuts in itertools.combinations(range(1, n), p - 1):
        bounds = (0, *cuts, n)
        if not all(stage_fits(pr, s, bounds[s], bounds[s + 1]) for s in range(p)):
            continue
        times = tuple(stage_time(pr, bounds[s], bounds[s + 1]) for s in range(p))
        obj = objective(times, pr.m)
        if best is None or obj < best.objective - 1e-12:
            best = Partition(bounds, times, obj)
    return best


def even_partition(n: int, p: int) -> tuple[int, ...]:
    """Layer-count balanced bounds (the Megatron-style split baselines use)."""
    if not 1 <= p <= n:
        raise ValueError(f"cannot split {n} layers into {p} stages")
    q, r = divmod(n, p)
    bounds = [0]
    for s in range(p):
        bounds.append(bounds[-1] + q + (1 if s < r else 0))
    return tuple(bounds)
