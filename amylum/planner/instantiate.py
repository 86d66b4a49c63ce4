"""Instantiation: which mix of templates runs on the nodes we have, and each pipeline's microbatches.

A pipeline of template t given b microbatches finishes at lat_t(b) = fixed_t + b·per_t
(fixed = fill − bottleneck + gradient sync, per = bottleneck; exact under the cost model).

- ``distribute``: integer microbatches b_j ≥ 1, Σ b_j = B, minimising max_j lat_j(b_j). Greedy:
  give every pipeline one, then each further microbatch to the pipeline that would finish earliest
  with it. Optimal because each lat_j is increasing: the greedy takes the B − p smallest values of
  the merged sequences {lat_j(b) : b ≥ 2}, and any allocation with makespan T uses B − p of those
  values, all ≤ T.
- ``fastest_mix``: min over mixes {x_t} with Σ x_t·n_t = N nodes and ≥ f+1 pipelines of the optimal
  makespan. A mix reaches makespan ≤ T iff Σ_t x_t·cap_t(T) ≥ B, cap_t(T) = the most microbatches
  a t-pipeline finishes by T; so for a fixed T the best mix is an exact-fill unbounded knapsack
  (maximise Σ cap), and the optimal T is the least feasible value among the finite candidates
  {lat_t(b)}: binary search. Polynomial, exact, and no enumeration of the (exponentially many)
  mixes; ``enumerate_mixes`` is the coin-change enumeration, kept for tests and small clusters.
- ``instantiate`` / ``replan``: node ids assigned to pipelines; after failures or joins the fastest
  mix for the surviving nodes is chosen again, intact pipelines keep their nodes, and the layers
  each node lacks are copied from surviving replicas (never from disk).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .templates import PipelineTemplate, TemplateSet


def template_cost(t: PipelineTemplate) -> tuple[float, float]:
    """(fixed_s, per_microbatch_s) with lat(b) = fixed + b·per."""
    return t.fill_s - t.bottleneck_s + t.sync_s, t.bottleneck_s


# ---- batch distribution -------------------------------------------------------------------

def distribute(costs: Sequence[tuple[float, float]], microbatches: int) -> tuple[list[int], float]:
    """Optimal integer split of ``microbatches`` over pipelines with lat_j(b) = fixed_j + b·per_j."""
    p = len(costs)
    if p == 0:
        raise ValueError("no pipelines to distribute microbatches over")
    if microbatches < p:
        raise ValueError(f"{microbatches} microbatches cannot give each of {p} pipelines at least one")
    b = [1] * p
    heap = [(fx + 2 * per, j) for j, (fx, per) in enumerate(costs)]
    heapq.heapify(heap)
    for _ in range(microbatches - p):
        _, j = heapq.heappop(heap)
        b[j] += 1
        fx, per = costs[j]
        heapq.heappush(heap, (fx + (b[j] + 1) * per, j))
    return b, max(fx + bj * per for (fx, per), bj in zip(costs, b))


# ---- mix enumeration (small cases, tests) -------------------------------------------------

def enumerate_mixes(sizes: Sequence[int], nodes: int, min_pipelines: int = 1,
                    max_pipelines: int | None = None) -> Iterator[dict[int, int]]:
    """Every multiset of template sizes summing to exactly ``nodes`` (coin change), filtered to
    min_pipelines ≤ count ≤ max_pipelines. Count grows like integer partitions: small N only."""
    sizes = sorted(set(sizes), reverse=True)

    def rec(i: int, left: int, count: int, acc: dict):
        if left == 0:
            if count >= min_pipelines and (max_pipelines is None or count <= max_pipelines):
                yield dict(acc)
            return
        if i == len(sizes):
            return
        s = sizes[i]
        for x in range(left // s, -1, -1):
            if x:
                acc[s] = x
            yield from rec(i + 1, left - x * s, count + x, acc)
            acc.pop(s, None)

    yield from rec(0, nodes, 0, {})


def coverage_gaps(sizes: Sequence[int], lo: int, hi: int, min_pipelines: int) -> list[int]:
    """Node counts in [lo, hi] that no mix of ``sizes`` with ≥ min_pipelines pipelines fills exactly."""
    q = min_pipelines
    reach = np.zeros((hi + 1, q + 1), dtype=bool)  # reach[j, c]: j nodes by min(count, q) pipelines
    reach[0, 0] = True
    for j in range(1, hi + 1):
        for s in sizes:
            if s <= j:
                prev = reach[j - s]
                reach[j, 1:] |= prev[:-1]
                reach[j, q] |= prev[q]
    return [n for n in range(lo, hi + 1) if not reach[n, q]]


# ---- fastest mix --------------------------------------------------------------------------

def _caps(fixed: np.ndarray, per: np.ndarray, T: float, B: int) -> np.ndarray:
    """Most microbatches each template's pipeline finishes by T (0 if not even one)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(per > 0, np.floor((T - fixed) / np.where(per > 0, per, 1.0) * (1 + 1e-12) + 1e-9),
                     np.where(T >= fixed, B, 0))
    return np.clip(c, 0, B).astype(np.int64)


NEG = -np.inf


def _shift(col: np.ndarray, x: int, s: int, c: float) -> np.ndarray:
    """col[j − x·s] + x·c (x more pipelines of size s and capacity c)."""
    out = np.full(col.shape[0], NEG)
    if x * s < col.shape[0]:
        out[x * s:] = col[:col.shape[0] - x * s] + x * c
    return out


def _unbounded(col: np.ndarray, s: int, c: float) -> np.ndarray:
    """max over x ≥ 0 of col[j − x·s] + x·c, for all j at once: along each residue class mod s this
    is i·c + running max of (col − i·c), so one cumulative max replaces the per-j loop."""
    n = col.shape[0]
    rows = -(-n // s)
    a = np.concatenate([col, np.full(rows * s - n, NEG)]).reshape(rows, s)
    i = np.arange(rows, dtype=float)[:, None] * c
    return (np.maximum.accumulate(a - i, axis=0) + i).reshape(-1)[:n]


def _knapsack(sizes, caps, N: int, Q: int):
    """Best Σ caps over mixes filling exactly N nodes with ≥ Q pipelines, and a lazy traceback.

    The first Q pipelines are added one at a time (A_q[j]: exactly q pipelines on j nodes), the
    rest by an unbounded knapsack U (any number, template by template with one cumulative max
    each); the answer is max_j A_Q[j] + U[N − j]. O((Q + 1)·K·N) numpy work for K templates.
    """
    use = [t for t in range(len(sizes)) if caps[t] >= 1]  # others cannot finish one microbatch
    U = np.full(N + 1, NEG)
    U[0] = 0.0
    u_tables = []
    for t in use:
        U = _unbounded(U, int(sizes[t]), float(caps[t]))
        u_tables.append(U)
    A = np.full(N + 1, NEG)
    A[0] = 0.0
    a_args = []
    for _ in range(Q):
        if not use:
            A = np.full(N + 1, NEG)
            break
        cands = np.stack([_shift(A, 1, int(sizes[t]), float(caps[t])) for t in use])
        arg = cands.argmax(axis=0)
        A = cands[arg, np.arange(N + 1)]
        a_args.append(arg)
    tot = A + U[::-1]  # A_Q[j] + U[N − j]
    j = int(tot.argmax())
    best = float(tot[j])

    def trace() -> list[int]:
        counts = [0] * len(sizes)
        jj = j
        for arg in reversed(a_args):  # the Q pipelines added one at a time
            t = use[int(arg[jj])]
            counts[t] += 1
            jj -= int(sizes[t])
        assert jj == 0
        r = N - j  # the unbounded part, template by template from the last
        for i in range(len(use) - 1, -1, -1):
            t, s, c = use[i], int(sizes[use[i]]), float(caps[use[i]])
            prev = u_tables[i - 1] if i > 0 else None
            for x in range(r // s + 1):
                v = (0.0 if r - x * s == 0 else NEG) if prev is None else prev[r - x * s]
                if v + x * c == u_tables[i][r]:
                    counts[t] += x
                    r -= x * s
                    break
            else:
                raise AssertionError("knapsack traceback failed")
        assert r == 0
        return counts

    return best, trace


def _knapsack_exact_count(sizes, caps, N: int, f: int, B: int):
    """Slow path when a mix could have more pipelines than microbatches: count kept exactly up to
    B + 1 (B + 1 meaning "too many"). Returns (best Σcap over counts in [f+1, B], traceback)."""
    Q = B + 1
    dp = np.full((N + 1, Q + 1), NEG)
    dp[0, 0] = 0.0
    choice = np.full((N + 1, Q + 1), -1, dtype=np.int64)
    for j in range(1, N + 1):
        for t, (s, c) in enumerate(zip(sizes, caps)):
            s = int(s)
            if s > j or c < 1:
                continue
            prev = dp[j - s]
            cand = np.full(Q + 1, NEG)
            cand[1:] = prev[:-1] + c
            cand[Q] = max(cand[Q], prev[Q] + c)
            better = cand > dp[j]
            dp[j, better] = cand[better]
            choice[j, better] = t
    qs = np.arange(f + 1, B + 1)
    if len(qs) == 0:
        return NEG, None
    q = int(qs[dp[N, f + 1:B + 1].argmax()])
    best = dp[N, q]
    counts, j = [0] * len(sizes), N
    while j > 0 and best > NEG:
        t = int(choice[j, q])
        counts[t] += 1
        j -= int(sizes[t])
        q -= 1
    return best, counts


def fastest_mix(costs_by_size: dict[int, tuple[float, float]], nodes: int, f: int,
                microbatches: int) -> tuple[dict[int, int], float]:
    """Mix {size: count} using exactly ``nodes`` nodes with ≥ f+1 pipelines whose optimal
    distribution of ``microbatches`` has the least makespan; returns (mix, makespan)."""
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if microbatches < f + 1:
        raise ValueError(f"f={f} needs >= f+1 = {f + 1} pipelines, each with >= 1 microbatch; "
                         f"the global batch has only {microbatches} microbatches")
    sizes_l = sorted(costs_by_size)
    sizes = np.array(sizes_l, dtype=np.int64)
    fixed = np.array([costs_by_size[s][0] for s in sizes_l])
    per = np.array([costs_by_size[s][1] for s in sizes_l])
    B, N = microbatches, nodes
    # the pipeline-count dimension is only as large as the bounds that can bind
    exact = N // int(sizes.min()) > B  # some mix could have more pipelines than microbatches
    Q = f + 1 if -(-N // int(sizes.max())) < f + 1 else 0  # some mix could have < f+1 pipelines

    def solve(T):
        caps = _caps(fixed, per, T, B)
        if exact:
            best, counts = _knapsack_exact_count(sizes, caps, N, f, B)
            return best >= B, (lambda: counts)
        best, trace = _knapsack(sizes, caps, N, Q)
        return best >= B, trace

    bmax = B - f  # with ≥ f+1 pipelines none gets more than B − f
    cand = np.unique((fixed[:, None] + np.arange(1, bmax + 1)[None, :] * per[:, None]).ravel())
    # a mix needs Σ caps ≥ B, and no template does better per node than the best one: skip the
    # candidates below that bound (pure speed; the search below stays exact)
    lo = 0
    per_node = lambda T: (_caps(fixed, per, T, B) / sizes).max() * N
    a, b = 0, len(cand) - 1
    while a < b:
        mid = (a + b) // 2
        if per_node(float(cand[mid])) >= B:
            b = mid
        else:
            a = mid + 1
    lo = a
    ok, counts = solve(float(cand[-1]))
    if not ok:
        raise ValueError(f"no mix of templates {sizes_l} fills {N} nodes with >= f+1 = {f + 1} pipelines "
                         f"(f={f} needs at least (f+1)·n0 = {(f + 1) * int(sizes.min())} nodes) and "
                         f"<= {B} pipelines")
    hi = len(cand) - 1  # invariant: cand[hi] feasible
    while lo < hi:
        mid = (lo + hi) // 2
        ok_mid, c_mid = solve(float(cand[mid]))
        if ok_mid:
            hi, counts = mid, c_mid
        else:
            lo = mid + 1
    mix = {s: x for s, x in zip(sizes_l, counts()) if x}
    return mix, float(cand[hi])


# ---- instances with node ids ---------------------------------------------------------------

@dataclass(frozen=True)
class PipelinePlan:
    template_nodes: int
    node_ids: tuple
    microbatches: int
    time_s: float


@dataclass(frozen=True)
class Instance:
    pipelines: tuple[PipelinePlan, ...]
    f: int
    global_microbatches: int

    @property
    def makespan_s(self) -> float:
        return max(p.time_s for p in self.pipelines)

    @property
    def node_ids(self) -> list:
        return [n for p in self.pipelines for n in p.node_ids]

    def mix(self) -> dict[int, int]:
        return dict(Counter(p.template_nodes for p in self.pipelines))

    def holdings(self, ts: TemplateSet) -> dict:
        """node id -> (stage width, layers it holds)."""
        out = {}
        for p in self.pipelines:
            t = ts[p.template_nodes]
            for i, n in enumerate(p.node_ids):
                out[n] = (t.gpus_per_stage, set(t.node_layers(i)))
        return out


def _build(ts: TemplateSet, groups: list[tuple[int, tuple]], f: int, B: int) -> Instance:
    costs = [template_cost(ts[s]) for s, _ in groups]
    b, _ = distribute(costs, B)
    pipes = tuple(PipelinePlan(s, ids, bj, ts[s].iteration_time(bj)) for (s, ids), bj in zip(groups, b))
    return Instance(pipes, f, B)


def _costs(ts: TemplateSet) -> dict[int, tuple[float, float]]:
    return {n: template_cost(t) for n, t in ts.templates.items()}


def instantiate(ts: TemplateSet, nodes, f: int, global_microbatches: int) -> Instance:
    """Fastest mix on ``nodes`` (a count, or a sequence of node ids) with ≥ f+1 pipelines."""
    ids = list(range(nodes)) if isinstance(nodes, int) else list(nodes)
    if len(set(ids)) != len(ids):
        raise ValueError("node ids must be unique")
    _check_enough(ts, len(ids), f)
    mix, _ = fastest_mix(_costs(ts), len(ids), f, global_microbatches)
    groups, k = [], 0
    for s in sorted(mix, reverse=True):
        for _ in range(mix[s]):
            groups.append((s, tuple(ids[k:k + s])))
            k += s
    return _build(ts, groups, f, global_microbatches)


def _check_enough(ts: TemplateSet, n: int, f: int) -> None:
    if n < (f + 1) * ts.n0:
        raise ValueError(f"f={f} needs at least (f+1)·n0 = {(f + 1) * ts.n0} nodes, have {n}")


class ReplicaLostError(RuntimeError):
    """Every replica of some layer was lost: only a disk checkpoint can restore it."""


@dataclass(frozen=True)
class Recovery:
    instance: Instance
    lost: tuple
    joined: tuple
    kept_pipelines: int  # pipelines that keep their nodes and layers untouched
    copy_bytes: float  # training state (weights + grads + optimizer) sent to nodes that lack it
    copy_time_s: float  # slowest node's receive time (each GPU receives its shard on its own link)


def replan(ts: TemplateSet, current: Instance, alive, f: int | None = None,
           global_microbatches: int | None = None) -> Recovery:
    """Re-plan from the templates after nodes failed and/or joined; ``alive`` are the node ids now up.

    Raises ReplicaLostError when some layer has no surviving replica (more failures at once than
    the plan tolerates): the caller must fall back to the last disk checkpoint.
    """
    f = current.f if f is None else f
    B = current.global_microbatches if global_microbatches is None else global_microbatches
    alive = list(alive)
    up = set(alive)
    old_ids = current.node_ids
    lost = tuple(n for n in old_ids if n not in up)
    joined = tuple(n for n in alive if n not in set(old_ids))
    L = len(ts.layers)
    held = current.holdings(ts)
    have = np.zeros(L, dtype=bool)
    for n, (_, layers) in held.items():
        if n in up:
            have[list(layers)] = True
    if not have.all():
        gone = [ts.layers[i].name for i in np.nonzero(~have)[0][:3]]
        raise ReplicaLostError(
            f"layers {gone} have no surviving replica: {len(lost)} nodes lost at once "
            f"(plan tolerates f={current.f}); resume from the last disk checkpoint")
    _check_enough(ts, len(alive), f)
    mix, _ = fastest_mix(_costs(ts), len(alive), f, B)
    want = Counter(mix)
    groups, kept = [], 0
    pool = []
    for p in current.pipelines:  # intact pipelines whose size is still wanted keep everything
        if all(n in up for n in p.node_ids) and want[p.template_nodes] > 0:
            want[p.template_nodes] -= 1
            groups.append((p.template_nodes, p.node_ids))
            kept += 1
        else:
            pool.extend(n for n in p.node_ids if n in up)
    pool.extend(joined)
    k = 0
    for s in sorted(want, reverse=True):
        for _ in range(want[s]):
            groups.append((s, tuple(pool[k:k + s])))
            k += s
    inst = _build(ts, groups, f, B)
    # what each node must receive: layers it did not hold, or held at another stage width
    # (FSDP shards a layer by the stage's GPU count, so a different width means a different shard)
    state = np.array([l.state_bytes for l in ts.layers])
    G = ts.node.gpus_per_node
    total, slowest = 0.0, 0.0
    for n, (g, layers) in inst.holdings(ts).items():
        og, olayers = held.get(n, (None, set()))
        need = layers if og != g else layers - olayers
        nbytes = float(state[list(need)].sum()) if need else 0.0
        total += nbytes
        slowest = max(slowest, nbytes / G / ts.node.inter_bw)
    return Recovery(inst, lost, joined, kept, total, slowest)


__all__ = ["distribute", "enumerate_mixes", "coverage_gaps", "fastest_mix", "template_cost", "PipelinePlan",
           "Instance", "instantiate", "replan", "Recovery", "ReplicaLostError"]
