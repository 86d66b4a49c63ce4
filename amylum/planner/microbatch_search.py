"""The two search tools of the microbatch policies: list scheduling (greedy, Graham) and a local
search on per-bin loads (moves and pairwise exchanges). Bins are lists of sample positions;
loads are normalised so that one bin's target in each column is known (1 for an even split, or a
load profile's share)."""

from __future__ import annotations

import heapq

import numpy as np


def desc(key: np.ndarray) -> np.ndarray:
    """Positions by decreasing key; stable, so equal keys keep dataset order and policies are deterministic."""
    return np.argsort(-key, kind="stable")


def greedy(order, weights: list[float], bins: int, targets: np.ndarray | None = None) -> list[list[int]]:
    """List scheduling: each sample (in ``order``) to the bin with the least weight so far, relative
    to its target (``targets[b]``, default 1).

    Ties go to the bin with fewer samples, so with >= ``bins`` samples no bin stays empty even
    when weights are zero. With even targets, max bin weight ≤ mean + max sample weight (Graham).
    """
    tgt = [1.0] * bins if targets is None else [float(t) for t in targets]
    if min(tgt) <= 0:
        raise ValueError(f"bin targets must be > 0, got {tgt}")
    heap = [(0.0, 0, b, 0.0) for b in range(bins)]
    members: list[list[int]] = [[] for _ in range(bins)]
    for i in np.asarray(order).tolist():  # Python ints: indexing lists with NumPy scalars is slow
        _, cnt, b, load = heap[0]
        members[b].append(i)
        load += weights[i]
        heapq.heapreplace(heap, (load / tgt[b], cnt + 1, b, load))
    return members


def refine(members: list[list[int]], w: np.ndarray, *, max_iters: int, target: np.ndarray | None = None,
           cols=None, forward_col: int | None = None, sample_cap: int = 96, tol: float = 1e-3,
           max_cells: int = 8) -> None:
    """Local search on Σ_bins Σ_columns (load − target)² by moving or exchanging samples between bins.

    ``w`` is normalised per column; ``target`` is (bins, columns), default all ones (the fair
    share). Each step takes the worst (bin, column) cell among ``cols`` (default: all) and its
    most opposite bins in that column, and applies the best move/exchange between the first pair
    that has an improving one. The objective spans every column, so fixing one column never buys
    imbalance in another. With ``forward_col`` set, that column's work may only move from an
    earlier bin to a later one (in-iteration deferral). No move empties a bin.
    """
    nb, d = len(members), w.shape[1]
    if d == 0 or nb < 2:
        return
    tgt = np.ones((nb, d)) if target is None else np.asarray(target, dtype=np.float64)
    cols = list(range(d)) if cols is None else list(cols)
    loads = np.array([w[m].sum(axis=0) if m else np.zeros(d) for m in members])
    for _ in range(max_iters):
        dev = loads - tgt
        sub = np.abs(dev[:, cols])
        cells = np.argsort(-sub, axis=None, kind="stable")[:max_cells]
        if sub.flat[cells[0]] < tol:
            return
        best = None
        # the worst cell may sit at its granularity floor (e.g. whole images per microbatch): then
        # the next-worst cells are tried before giving up
        for cell in cells.tolist():
            b0, c = cell // len(cols), cols[cell % len(cols)]
            sign = 1.0 if dev[b0, c] > 0 else -1.0
            for b1 in np.argsort(sign * dev[:, c], kind="stable")[:3].tolist():
                if b1 == b0 or sign * dev[b1, c] >= 0:
                    break
                p, q = (b0, b1) if sign > 0 else (b1, b0)  # p gives work in column c, q receives it
                cand = _best_exchange(members[p], members[q], w, dev[p], dev[q], p, q, forward_col, sample_cap)
                if cand is not None and cand[0] < -1e-12:
                    best = (cand[0], p, q, cand[1], cand[2])
                    break
            if best is not None:
                break
        if best is None:
            return
        _, p, q, a, b = best
        members[p].remove(a)
        members[q].append(a)
        delta = w[a].copy()
        if b >= 0:
            members[q].remove(b)
            members[p].append(b)
            delta -= w[b]
        loads[p] -= delta
        loads[q] += delta


def _best_exchange(mp: list[int], mq: list[int], w: np.ndarray, dp: np.ndarray, dq: np.ndarray,
                   p: int, q: int, forward_col: int | None, cap: int):
    """Best (Δobjective, a, b) for sending ``a`` from bin p to q and ``b`` (or nothing, -1) back."""
    a_idx = np.asarray(mp[:cap] if len(mp) <= cap else _spread(mp, cap))
    b_idx = np.asarray(mq[:cap] if len(mq) <= cap else _spread(mq, cap))
    A = w[a_idx]
    Bz = np.vstack([w[b_idx], np.zeros((1, w.shape[1]))]) if len(b_idx) else np.zeros((1, w.shape[1]))
    # δ = a − b; Σ_d (dp−δ)² + (dq+δ)² − dp² − dq² = 2 Σ_d δ(δ + dq − dp), expanded into
    # matrix products so no (na, nb, d) tensor is built
    g = dq - dp
    gain = (A * A).sum(1)[:, None] + (Bz * Bz).sum(1)[None, :] - 2.0 * (A @ Bz.T)
    gain += (A @ g)[:, None] - (Bz @ g)[None, :]
    gain *= 2.0
    if len(mp) <= 1:
        gain[:, -1] = np.inf  # moving p's only sample would empty it
    if forward_col is not None:
        flow = A[:, forward_col][:, None] - Bz[:, forward_col][None, :]  # work that goes p → q
        bad = flow < 0 if p < q else flow > 0
        gain[bad] = np.inf
    i, j = np.unravel_index(int(np.argmin(gain)), gain.shape)
    if not np.isfinite(gain[i, j]):
        return None
    b = int(b_idx[j]) if j < len(b_idx) else -1
    return float(gain[i, j]), int(a_idx[i]), b


def _spread(members: list[int], cap: int) -> list[int]:
    # a deterministic, evenly spaced subset keeps big bins (level 1: ~500 samples) cheap to search
    step = len(members) / cap
    return [members[int(k * step)] for k in range(cap)]
