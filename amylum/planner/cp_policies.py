"""CP token-assignment policies over block weights: uniform, zigzag, contiguous, LPT, refined, exact.

Pure list-of-blocks algorithms; ``cp_balance.plan_cp`` turns a mask into block weights and
calls :func:`assign_blocks`.
"""

from __future__ import annotations

import heapq

import numpy as np

POLICIES = ("uniform", "zigzag", "makespan_attn", "makespan", "balanced", "contiguous")
EXACT_MAX_BLOCKS = 14  # branch and bound stays well under a second up to here (tested sizes)


def _chunks(n: int, parts: int) -> list[list[int]]:
    return [list(c) for c in np.array_split(np.arange(n), parts)]


def uniform_blocks(n: int, cp: int) -> list[list[int]]:
    return _chunks(n, cp)


def zigzag_blocks(n: int, cp: int) -> list[list[int]]:
    chunks = _chunks(n, 2 * cp)
    return [sorted(chunks[i] + chunks[2 * cp - 1 - i]) for i in range(cp)]


def contiguous_blocks(weights: np.ndarray, cp: int) -> list[list[int]]:
    """Contiguous runs of blocks with the smallest maximum load (every rank gets a block if n ≥ cp).

    Binary search on the cap with a greedy feasibility check. Contiguity keeps a rank's
    queries near each other, so under a mask-aware K/V exchange it needs few remote keys
    (packed rows: about its own samples), at some cost in balance when blocks are few.
    """
    n = len(weights)
    w = [float(x) for x in weights]

    def split(cap: float):
        parts, cur, load = [], [], 0.0
        for i, x in enumerate(w):
            ranks_left = cp - len(parts) - 1  # ranks after the current one
            must_cut = cur and n - i <= ranks_left  # leave one block for each later rank
            if cur and (load + x > cap or must_cut):
                parts.append(cur)
                cur, load = [], 0.0
            cur.append(i)
            load += x
        parts.append(cur)
        return parts if len(parts) <= cp and all(sum(w[i] for i in p) <= cap * (1 + 1e-12) for p in parts) else None

    lo_cap, hi_cap = max(w, default=0.0), sum(w)
    best = split(hi_cap)  # always feasible: cuts only to leave each later rank a block
    for _ in range(60):
        mid = (lo_cap + hi_cap) / 2
        got = split(mid)
        if got is not None:
            best, hi_cap = got, mid
        else:
            lo_cap = mid
        if hi_cap - lo_cap <= 1e-9 * max(hi_cap, 1e-300):
            break
    return [list(p) for p in best] + [[] for _ in range(cp - len(best))]


def lpt_blocks(weights: np.ndarray, cp: int) -> list[list[int]]:
    """Longest processing time first: heaviest block to the least loaded rank (Graham's 4/3 bound)."""
    order = np.argsort(-weights, kind="stable")
    heap = [(0.0, r) for r in range(cp)]
    out: list[list[int]] = [[] for _ in range(cp)]
    for b in order:
        load, r = heapq.heappop(heap)
        out[r].append(int(b))
        heapq.heappush(heap, (load + float(weights[b]), r))
    return out


def _loads(weights: np.ndarray, ranks: list[list[int]]) -> list[float]:
    return [float(weights[r].sum()) if r else 0.0 for r in ranks]


def _best_exchange(weights: np.ndarray, a: list[int], b: list[int], gap: float):
    """Best move (x from a to b) or swap (x ↔ y) shifting d ∈ (0, gap) with d closest to gap/2.

    Returns (d, x, y or None); d = 0 when nothing lowers max(load_a, load_b).
    """
    target = gap / 2.0
    best = (0.0, None, None)
    score = lambda d: abs(d - target)  # noqa: E731 — moving d leaves max(la − d, lb + d) = (la+lb)/2 + |d − gap/2|
    for x in a:
        d = float(weights[x])
        if 0.0 < d < gap and score(d) < score(best[0]) - 1e-12 * gap:
            best = (d, x, None)
    if b:
        wb = weights[b]
        order = np.argsort(wb)
        sorted_w = wb[order]
        for x in a:
            wx = float(weights[x])
            # want wx − wy ≈ target → wy ≈ wx − target
            i = int(np.searchsorted(sorted_w, wx - target))
            for j in (i - 1, i):
                if 0 <= j < len(sorted_w):
                    d = wx - float(sorted_w[j])
                    if 0.0 < d < gap and score(d) < score(best[0]) - 1e-12 * gap:
                        best = (d, x, b[int(order[j])])
    return best


def refine_blocks(weights: np.ndarray, ranks: list[list[int]], max_steps: int | None = None,
                  rel_tol: float = 1e-5) -> list[list[int]]:
    """Move/swap blocks from the most loaded rank to lighter ones while that lowers the pair's max.

    Every accepted step strictly lowers the most loaded rank's load and leaves its partner
    below the old maximum, so the makespan never increases and the sum of squared loads
    strictly decreases (termination). Steps that lower the pair's maximum by less than
    ``rel_tol`` × the mean load are not worth their time (thousands of them on near-equal
    blocks) and end the search.
    """
    ranks = [list(r) for r in ranks]
    loads = _loads(weights, ranks)
    min_gain = rel_tol * sum(loads) / max(1, len(ranks))
    steps = max_steps if max_steps is not None else 4 * len(weights) + 100
    for _ in range(steps):
        a = int(np.argmax(loads))
        done = True
        for b in sorted(range(len(ranks)), key=lambda r: loads[r]):
            if b == a:
                continue
            gap = loads[a] - loads[b]
            if gap <= 0:
                break
            d, x, y = _best_exchange(weights, ranks[a], ranks[b], gap)
            if d <= 0 or min(d, gap - d) < min_gain:  # the pair's max drops by min(d, gap − d)
                continue
            ranks[a].remove(x)
            ranks[b].append(x)
            if y is not None:
                ranks[b].remove(y)
                ranks[a].append(y)
            loads[a], loads[b] = loads[a] - d, loads[b] + d
            done = False
            break
        if done:
            break
    return ranks


def exact_blocks(weights: np.ndarray, cp: int, start: list[list[int]] | None = None,
                 node_limit: int = 400_000) -> tuple[list[list[int]], bool]:
    """Minimum-makespan assignment by branch and bound; ``(ranks, proven_optimal)``.

    Blocks go heaviest first; ranks with equal load are interchangeable, so only one of them
    is tried (symmetry). Bounds: the incumbent (``start``, e.g. refined LPT), the heaviest
    block, and the average load of what is left. Stops after ``node_limit`` nodes and returns
    the best found (``proven_optimal`` False).
    """
    n = len(weights)
    order = [int(b) for b in np.argsort(-weights, kind="stable")]
    w = [float(weights[b]) for b in order]
    suffix = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        suffix[i] = suffix[i + 1] + w[i]
    best_ranks = start if start is not None else lpt_blocks(weights, cp)
    best = max(_loads(weights, best_ranks))
    lower = max(max(w, default=0.0), suffix[0] / cp)
    if best <= lower * (1 + 1e-12):
        return [sorted(r) for r in best_ranks], True
    loads = [0.0] * cp
    choice = [0] * n
    nodes = 0
    found = None
    tol = 1e-12 * max(best, 1e-300)

    def dfs(i: int, current: float) -> bool:  # True: optimal proven (hit the lower bound), stop
        nonlocal best, found, nodes
        nodes += 1
        if nodes > node_limit:
            return True
        if i == n:
            best, found = current, list(choice)
            return best <= lower + tol
        if max(current, (sum(loads) + suffix[i]) / cp) >= best - tol:
            return False
        tried = set()
        for r in sorted(range(cp), key=lambda r: loads[r]):
            if loads[r] in tried or loads[r] + w[i] >= best - tol:
                continue
            tried.add(loads[r])
            loads[r] += w[i]
            choice[i] = r
            stop = dfs(i + 1, max(current, loads[r]))
            loads[r] -= w[i]
            if stop:
                return True
        return False

    dfs(0, 0.0)
    proven = nodes <= node_limit
    if found is None:
        return [sorted(r) for r in best_ranks], proven
    ranks: list[list[int]] = [[] for _ in range(cp)]
    for i, r in enumerate(found):
        ranks[r].append(order[i])
    return [sorted(r) for r in ranks], proven


def assign_blocks(weights: np.ndarray, cp: int, policy: str, *, exact_max_blocks: int = EXACT_MAX_BLOCKS) -> list[list[int]]:
    """Blocks per rank for block ``weights`` (already weighted the way ``policy`` wants)."""
    weights = np.asarray(weights, dtype=np.float64)
    n = len(weights)
    if policy == "uniform":
        return uniform_blocks(n, cp)
    if policy == "zigzag":
        return zigzag_blocks(n, cp)
    if policy == "contiguous":
        return contiguous_blocks(weights, cp)
    if policy in ("makespan", "makespan_attn"):
        return lpt_blocks(weights, cp)
    if policy == "balanced":
        ranks = refine_blocks(weights, lpt_blocks(weights, cp))
        if n <= exact_max_blocks:
            ranks, _ = exact_blocks(weights, cp, start=ranks)
        return ranks
    raise ValueError(f"unknown CP policy {policy!r}; expected one of {POLICIES}")
