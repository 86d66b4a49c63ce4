"""The two search tools of the microbatch policies: list scheduling (greedy, Graham) and a local
search on per-bin loads (moves and pairwise exchanges). Bins are lists of sample positions;
loads are normalised so that one bin's target in each column is known (1 for an even split, or a
load profile's share).

Speed (issue 9: a 4,096-sample batch in well under 50 ms) comes from fewer NumPy calls, not from
different arithmetic: the results are bit-for-bit those of the plain implementation kept in
tests/planner/test_microbatch_exact.py (same sums in the same order, same stable sorts), which
determinism and resume rely on. Bookkeeping on a few bins × columns numbers is plain Python;
NumPy is for whole arrays."""

from __future__ import annotations

import bisect
import heapq
import itertools
import math

import numpy as np

_U = 2.0 ** -53  # unit roundoff of float64


def desc(key: np.ndarray) -> np.ndarray:
    """Positions by decreasing key; stable, so equal keys keep dataset order and policies are deterministic."""
    return (-key).argsort(kind="stable")


def greedy(order, weights: list[float], bins: int, targets: np.ndarray | None = None) -> list[list[int]]:
    """List scheduling: each sample (in ``order``) to the bin with the least weight so far, relative
    to its target (``targets[b]``, default 1).

    Ties go to the bin with fewer samples, so with >= ``bins`` samples no bin stays empty even
    when weights are zero. With even targets, max bin weight ≤ mean + max sample weight (Graham).
    """
    tgt = [1.0] * bins if targets is None else [float(t) for t in targets]
    if min(tgt) <= 0:
        raise ValueError(f"bin targets must be > 0, got {tgt}")
    members: list[list[int]] = [[] for _ in range(bins)]
    append = [m.append for m in members]  # the hot loop of every policy: bound methods, no lookups
    replace = heapq.heapreplace
    order = np.asarray(order).tolist()  # Python ints: indexing lists with NumPy scalars is slow
    if all(t == 1.0 for t in tgt):  # even targets: the key is the load itself (load / 1.0 == load)
        heap = [(0.0, 0, b) for b in range(bins)]
        for i in order:
            load, cnt, b = heap[0]
            append[b](i)
            replace(heap, (load + weights[i], cnt + 1, b))
        return members
    heap = [(0.0, 0, b, 0.0) for b in range(bins)]
    for i in order:
        _, cnt, b, load = heap[0]
        append[b](i)
        load += weights[i]
        replace(heap, (load / tgt[b], cnt + 1, b, load))
    return members


def gather(members: list[list[int]]) -> tuple[np.ndarray, list[int]]:
    """Every bin's positions concatenated into one array (one conversion from the lists), and
    where each bin ends in it."""
    idx = np.fromiter(itertools.chain.from_iterable(members), dtype=np.int64, count=sum(map(len, members)))
    return idx, list(itertools.accumulate(len(m) for m in members))


def bin_sums(w: np.ndarray, members: list[list[int]], gathered: tuple[np.ndarray, list[int]] | None = None) -> list:
    """Per bin, ``w[m].sum(axis=0).tolist()`` (a float for 1-D ``w``), bitwise, with the rows
    gathered once (or taken from ``gathered``).

    One column (or 1-D): each bin's rows are a contiguous slice shaped like ``w[m]``, summed by
    the same NumPy reduction (pairwise). Several columns: NumPy sums a C-ordered ``w[m]`` row by
    row (a running sum per column, not pairwise), which ``bincount`` computes for every bin at
    once, in the same order (the microbatch tests check both against ``w[m].sum(axis=0)``)."""
    idx, ends = gather(members) if gathered is None else gathered
    rows = w.take(idx, axis=0)  # (take: several times faster than fancy indexing for row gathers)
    if rows.ndim == 2 and rows.shape[1] > 1:
        label = np.arange(len(members)).repeat([len(m) for m in members])
        return np.array([np.bincount(label, weights=rows[:, c], minlength=len(members))
                         for c in range(rows.shape[1])]).T.tolist()
    return [np.add.reduce(rows[s:e], axis=0).tolist() for s, e in zip([0, *ends[:-1]], ends)]


def refine(members: list[list[int]], w: np.ndarray, *, max_iters: int, target: np.ndarray | None = None,
           cols=None, forward_col: int | None = None, sample_cap: int = 96, tol: float = 1e-3,
           max_cells: int = 8, loads: list | None = None) -> None:
    """Local search on Σ_bins Σ_columns (load − target)² by moving or exchanging samples between bins.

    ``w`` is normalised per column; ``target`` is (bins, columns), default all ones (the fair
    share). Each step takes the worst (bin, column) cell among ``cols`` (default: all) and its
    most opposite bins in that column, and applies the best move/exchange between the first pair
    that has an improving one. The objective spans every column, so fixing one column never buys
    imbalance in another. With ``forward_col`` set, that column's work may only move from an
    earlier bin to a later one (in-iteration deferral). No move empties a bin. ``loads``: the
    bins' column sums of ``w`` (:func:`bin_sums`) when the caller has them already.
    """
    nb, d = len(members), w.shape[1]
    if d == 0 or nb < 2:
        return
    # row-major: rows are gathered (into row-major arrays, whatever w's order) all the time
    w = np.ascontiguousarray(w)
    cols = list(range(d)) if cols is None else list(cols)
    # The per-step bookkeeping is on at most bins × columns numbers: plain Python floats, which do
    # the same IEEE arithmetic as NumPy without its per-call overhead; only the exchange search
    # (matrices of candidates, :class:`_Exchanges`) uses NumPy.
    tgt = [[1.0] * d for _ in range(nb)] if target is None else np.asarray(target, dtype=np.float64).tolist()
    loads = bin_sums(w, members) if loads is None else [list(x) for x in loads]
    dev = [[x - t for x, t in zip(lb, tb)] for lb, tb in zip(loads, tgt)]  # load − target
    cells_of = [(b, c) for b in range(nb) for c in cols]  # row-major, as dev[:, cols].flat
    sub = [abs(dev[b][c]) for b, c in cells_of]  # |load − target| per cell
    ex = _Exchanges(members, w, forward_col, sample_cap)
    for _ in range(max_iters):
        # worst cells first; reverse=True keeps equal cells in order (a stable sort of −sub)
        cells = sorted(range(len(sub)), key=sub.__getitem__, reverse=True)[:max_cells]
        if sub[cells[0]] < tol:
            return
        best = ex.first_improving(_pairs(cells, cells_of, dev), dev)
        if best is None:
            return
        p, q, a, b = best
        members[p].remove(a)
        members[q].append(a)
        delta = w[a].tolist()
        if b >= 0:
            members[q].remove(b)
            members[p].append(b)
            delta = [x - y for x, y in zip(delta, w[b].tolist())]
        for r, new in ((p, [x - y for x, y in zip(loads[p], delta)]), (q, [x + y for x, y in zip(loads[q], delta)])):
            loads[r] = new
            dev[r] = [x - t for x, t in zip(new, tgt[r])]
            sub[r * len(cols):(r + 1) * len(cols)] = [abs(dev[r][c]) for c in cols]
        ex.changed(p, q)


def _pairs(cells: list[int], cells_of: list[tuple[int, int]], dev: list[list[float]]):
    """The (p, q) bin pairs :func:`refine` tries, in order (lazily: the first one usually improves):
    per cell, worst first, the cell's bin and each of the 3 bins most opposite to it in its column,
    p the one giving work in that column and q the one receiving it. The worst cell may sit at its
    granularity floor (e.g. whole images per microbatch): then the next-worst cells are tried."""
    opposite: dict[tuple[int, float], list[int]] = {}  # (column, sign) → its 3 most opposite bins
    for cell in cells:
        b0, c = cells_of[cell]
        sign = 1.0 if dev[b0][c] > 0 else -1.0
        if (c, sign) not in opposite:
            key = [sign * dv[c] for dv in dev]
            opposite[c, sign] = sorted(range(len(dev)), key=key.__getitem__)[:3]
        for b1 in opposite[c, sign]:
            if b1 == b0 or sign * dev[b1][c] >= 0:
                break
            yield (b0, b1) if sign > 0 else (b1, b0)


class _Exchanges:
    """Best move/exchange between two bins (:meth:`best`) for :func:`refine`, keeping what does not
    change between its steps: each bin's candidate rows, and each pair's answer until one of its
    bins changes (a step changes two bins; pairs tried again are mostly untouched).

    Every gain is computed with exactly the same floating-point operations as a direct evaluation
    (row norms gathered instead of recomputed, bitwise the same; with one column, plain products
    instead of one-term matrix products, also bitwise the same), and a pair is only skipped when
    it provably cannot improve (:meth:`_cannot_improve`), so ties, and hence the assignment, do
    not depend on what was kept or skipped."""

    def __init__(self, members: list[list[int]], w: np.ndarray, forward_col: int | None, cap: int):
        self.members, self.forward_col, self.cap = members, forward_col, cap
        # one zero row appended: "nothing comes back" (a plain move) is an exchange with that row
        self.zero = len(w)
        self.wz = np.zeros((len(w) + 1, w.shape[1]))  # row-major (whatever w's order): each row's
        self.wz[:-1] = w  # squared norm is summed along contiguous memory, as for rows gathered by w[idx]
        self.sq = np.add.reduce(self.wz * self.wz, axis=1)
        self.one_col = w.shape[1] == 1
        if self.one_col:
            self.col = self.wz[:, 0].tolist()
            self.values: dict[tuple[int, bool], tuple] = {}  # (bin, giving?) → (version, sorted values)
        self.version = [0] * len(members)
        self.sides: dict[tuple[int, bool], tuple] = {}  # (bin, giving?) → (version, idx, rows, norms)
        self.pairs: dict[tuple[int, int], tuple] = {}  # (p, q) → (version p, version q, answer)

    def first_improving(self, pairs, dev: list[list[float]]):
        """(p, q, a, b) of the first pair of the iterable ``pairs`` whose best exchange improves,
        or None.

        With one column, once the first pair fails (a granularity floor: typical of whole images),
        pairs that provably cannot improve (:meth:`_cannot_improve`) are not evaluated: the
        first improving pair, and so the step, is the same."""
        pairs = iter(pairs)
        for p, q in pairs:
            cand = self.best(p, q, dev)
            if cand is not None and cand[0] < -1e-12:
                return p, q, cand[1], cand[2]
            if self.one_col:  # the first pair failed (a granularity floor?): skip those that cannot improve
                for p, q in pairs:
                    if not self._known(p, q) and self._cannot_improve(p, q, dev):
                        continue
                    cand = self.best(p, q, dev)
                    if cand is not None and cand[0] < -1e-12:
                        return p, q, cand[1], cand[2]
        return None

    def changed(self, *bins: int) -> None:
        for b in bins:
            self.version[b] += 1

    def _candidates(self, b: int, giving: bool) -> list[int]:
        """Bin b's candidate samples (all, or an even spread of ``cap``); receiving, the zero row last."""
        m = self.members[b]
        idx = m if len(m) <= self.cap else _spread(m, self.cap)
        return idx if giving else [*idx, self.zero]

    def _side(self, b: int, giving: bool):
        hit = self.sides.get((b, giving))
        if hit is not None and hit[0] == self.version[b]:
            return hit[1:]
        ids = self._candidates(b, giving)
        idx = np.fromiter(ids, dtype=np.int64, count=len(ids))
        rows = self.wz.take(idx, axis=0)
        side = (idx, rows[:, 0] if self.one_col else rows, self.sq[idx])
        self.sides[b, giving] = (self.version[b], *side)
        return side

    def best(self, p: int, q: int, dev: list[list[float]]):
        """Best (Δobjective, a, b) for sending ``a`` from bin p to q and ``b`` (or nothing, -1) back;
        None when every candidate is forbidden. ``dev`` is load − target per bin and column."""
        vp, vq = self.version[p], self.version[q]
        hit = self.pairs.get((p, q))
        if hit is not None and hit[0] == vp and hit[1] == vq:  # neither bin changed: neither did dev[p], dev[q]
            return hit[2]
        a_idx, A, a_sq = self._side(p, True)
        b_idx, B, b_sq = self._side(q, False)
        # δ = a − b; Σ_d (dp−δ)² + (dq+δ)² − dp² − dq² = 2 Σ_d δ(δ + dq − dp) = 2 (|a|² + |b|² − 2a·b
        # + a·g − b·g), g = dq − dp, expanded into matrix products so no (na, nb, d) tensor is built.
        # The factor 2 is applied to the chosen value only (doubling is exact: same argmin).
        if self.one_col:  # one-term dot products: a plain product, rounded once either way
            g = dev[q][0] - dev[p][0]
            two_ab = np.multiply.outer(A, B)
            ag, bg = A * g, B * g
        else:
            g = np.array([x - y for x, y in zip(dev[q], dev[p])])
            two_ab = A @ B.T
            ag, bg = A @ g, B @ g
        two_ab *= 2.0
        gain = np.add.outer(a_sq, b_sq)
        gain -= two_ab
        gain += np.subtract.outer(ag, bg)
        if len(self.members[p]) <= 1:
            gain[:, -1] = np.inf  # moving p's only sample would empty it
        fc = self.forward_col
        if fc is not None:  # no work in that column may flow from q back to p: a − b < 0 ⇔ a < b
            af, bf = (A, B) if self.one_col else (A[:, fc], B[:, fc])
            np.putmask(gain, np.less.outer(af, bf) if p < q else np.greater.outer(af, bf), np.inf)
        k = int(gain.argmin())
        i, j = divmod(k, gain.shape[1])
        g_best = float(gain[i, j])
        ans = None
        if math.isfinite(g_best):
            ans = (2.0 * g_best, int(a_idx[i]), int(b_idx[j]) if j < len(b_idx) - 1 else -1)
        self.pairs[p, q] = (vp, vq, ans)
        return ans

    def _cannot_improve(self, p: int, q: int, dev: list[list[float]]) -> bool:
        """One column only: True when it is proven, without evaluating them, that no exchange
        between p and q passes refine's test (a change below −1e-12); False when unsure.

        :meth:`best` computes f ≈ E = δ² + δg = −δ(G − δ) (half the change), δ = a − b,
        g = dq − dp = −G < 0, with |f − E| ≤ 4.001u·S (u = 2⁻⁵³: at most four roundings on any
        path; S = (A + B)(A + B + G) bounds a² + b² + 2|ab| + (|a| + |b|)G, A and B the largest
        magnitudes). Passing needs f < −5e-13, hence δ(G − δ) > T' = 5e-13 − 5u·S. δ ≤ 0 (a ≤ b, an
        exact comparison) or δ ≥ G gives E ≥ 0. For 0 < δ < G the exact δ(G − δ) is largest at
        the b nearest a − G/2 on either side; it is evaluated there in floats (off by less than
        5u(A + B + G)²) and compared with T = T' minus that bound."""
        big = dev[p][0] - dev[q][0]  # G: best()'s g is exactly its negation
        va, vb = self._values(p, True), self._values(q, False)
        mag = max(-va[0], va[-1]) + max(-vb[0], vb[-1])  # A + B
        top = mag + big
        t = 4.99e-13 - 5 * _U * mag * top - 5 * _U * top * top
        if not (big > 0 and t > 0):  # (also False for NaN)
            return False
        half = 0.5 * big
        for x in va:
            k = bisect.bisect_left(vb, x)  # vb[:k] < x: the candidates with δ > 0
            c = bisect.bisect_left(vb, x - half, 0, k)
            for j in range(max(c - 2, 0), min(c + 2, k)):  # the neighbours of a − G/2, rounding included
                d = x - vb[j]
                if d * (big - d) > t:
                    return False
        return True

    def _values(self, b: int, giving: bool) -> list[float]:
        """Sorted distinct values of bin b's candidates (one column), kept until the bin changes."""
        hit = self.values.get((b, giving))
        if hit is None or hit[0] != self.version[b]:
            hit = (self.version[b], sorted({self.col[i] for i in self._candidates(b, giving)}))
            self.values[b, giving] = hit
        return hit[1]

    def _known(self, p: int, q: int) -> bool:
        hit = self.pairs.get((p, q))
        return hit is not None and hit[0] == self.version[p] and hit[1] == self.version[q]


def _spread(members: list[int], cap: int) -> list[int]:
    # a deterministic, evenly spaced subset keeps big bins (level 1: ~500 samples) cheap to search
    step = len(members) / cap
    return [members[int(k * step)] for k in range(cap)]
