"""amylum's hierarchical microbatch assignment, after Entrain's public description (the exact
algorithm is not public; docs/microbatching.md §2):

1. split the global batch across replicas so every replica's encoder work (per modality) and
   LLM work are each close to 1/R of the batch's (every replica gets at least M samples);
2. inside a replica, first even the encoder work per microbatch (samples with encoder work
   only: longest-first, then local search on the encoder columns), then even the LLM work
   without undoing that: samples whose encoder work agrees to ~5 % are re-matched among their
   own slots, encoder-free samples fill LLM deficits, and the microbatches are ordered
   heaviest-LLM first so a last short local search may only *defer* LLM excess to later
   microbatches of the same iteration.

With a ``profile`` (shares per microbatch and column, e.g. from
:func:`amylum.planner.load_profile.profile_from_plan`) step 2 aims at those shares instead of
even ones, microbatch k taking row k: a pipeline's fill and drain microbatches light, its
steady middle heavier. Deferral is then the profile's: where work goes is fixed by the rows.
"""

from __future__ import annotations

import heapq

import numpy as np

from .microbatch_search import bin_sums, desc, gather, greedy, refine
from .work_model import WorkTable

Assignment = list[list[np.ndarray]]

# relative width of an encoder-work bucket: samples whose encoder work (per modality) agrees to
# within ~5 % are treated as interchangeable when LLM work is rebalanced
_BUCKET = np.log(1.05)


def _normalise(w: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale each column so one bin's fair share is 1; drop columns that are zero everywhere.

    Returns the scaled columns and the mask of kept columns."""
    tot = w.sum(axis=0)
    keep = tot > 0
    # column-major, as the column selection makes it: sums along a row follow the memory order
    # (pairwise over 8 or more contiguous values), so later row sums depend on it
    if keep.all():  # nothing to select: scale straight into column-major memory
        return np.multiply(w, bins / tot, order="F"), keep
    return (w[:, keep] * (bins / tot[keep]) if keep.any() else np.zeros((len(w), 0))), keep


def _stable_order(key: np.ndarray, bits: int) -> np.ndarray:
    """``key.argsort(kind="stable")`` for integer keys in [0, 2**bits): each position packed into the
    low bits makes every key distinct, so a plain sort (vectorised, several times faster than a
    stable argsort) gives the same order; falls back to the stable argsort when 63 bits are not enough."""
    n = len(key)
    shift = max(n - 1, 1).bit_length()
    if bits + shift > 63:
        return key.argsort(kind="stable")
    packed = (key << shift) | np.arange(n)
    packed.sort()
    return packed & ((1 << shift) - 1)


def _signature_groups(enc_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups of interchangeable samples (rows of ``enc_norm``): same bucket of encoder work in every
    modality. Returns (rows grouped, group starts + end): groups in lexicographic order of their
    buckets, members in row order (the order ``np.unique(axis=0)`` and a stable sort give)."""
    # (the log's argument is >= 1e-300: no divide-by-zero to silence)
    q = np.where(enc_norm > 0, np.floor(np.log(np.maximum(enc_norm, 1e-300)) / _BUCKET), -(2 ** 40)).astype(np.int64)
    if q.shape[1] <= 4 and np.isfinite(enc_norm).all():
        # a finite value's bucket lies in [-14159, 14547] and zero work's (-2^40) is below all:
        # clipped to -15260, 15 bits per column make one integer key with the same lexicographic
        # order, sorted much faster than by np.lexsort
        key = np.zeros(len(q), dtype=np.int64)
        for col in (np.maximum(q, -15260) + 15260).T:
            key = (key << 15) | col
        order = _stable_order(key, 15 * q.shape[1])
        ks = key[order]
        cuts = (ks[1:] != ks[:-1]).nonzero()[0] + 1
    else:
        order = np.lexsort(q.T[::-1])
        qs = q[order]
        cuts = (qs[1:] != qs[:-1]).any(axis=1).nonzero()[0] + 1
    return order, np.concatenate(([0], cuts, [len(order)]))


# groups up to this size are re-matched in plain Python, larger ones with NumPy (whose per-call
# overhead dominates for a handful of samples); both do the same floating-point operations
_SMALL_GROUP = 16


def _rematch_llm(enc_norm: np.ndarray, e_idx: np.ndarray, llm: np.ndarray, bin_of: np.ndarray,
                 llm_target: np.ndarray, sweeps: int) -> None:
    """Step (b) of :func:`_balance`, updating ``bin_of`` in place: inside each group of
    interchangeable samples (rows ``e_idx`` of the table, encoder work ``enc_norm``), heaviest
    groups first, the heaviest LLM sample goes to the slot of the bin with the largest LLM deficit;
    groups placed later see what earlier ones took.

    A group only permutes its own slots, so everything but the deficits is computed for all
    groups at once before the loop: the groups' order, their slots in order, the spread of
    multi-slot bins, each group's LLM work per bin. Per group the loop then does the same
    floating-point operations, in the same order, as a group-by-group NumPy evaluation (sums per
    bin as bincount's running sums in member order, a stable sort of the same keys), so the
    result does not depend on which of the two paths (plain Python for small groups) a group takes."""
    bins = len(llm_target)
    order, starts = _signature_groups(enc_norm)
    sizes = starts[1:] - starts[:-1]
    multi = sizes > 1  # a group of one sample has nothing to re-match
    if not multi.any():
        return
    members = e_idx[order[multi.repeat(sizes)]]  # groups in signature order, contiguous
    sizes = sizes[multi]
    ends = sizes.cumsum().tolist()
    spans = list(zip([0, *ends[:-1]], ends))
    w = llm[members]
    # NumPy's own sum per group (pairwise, not a running sum): the groups' order and mean weight
    sums = np.array([np.add.reduce(w[s:e]) for s, e in spans])
    cur = bin_of[members]  # each member's bin, re-matched group by group
    g0 = (np.arange(len(sizes)) * bins).repeat(sizes)  # group × bins, per member
    keyed = g0 + cur
    keyed.sort()  # group-major, then slot
    slots = keyed - g0  # each group's slots, sorted
    # the j-th slot of a bin expects j average members before it: spreads multi-slot bins
    n = len(members)
    run = np.empty(n, dtype=bool)
    run[0] = True
    np.not_equal(keyed[1:], keyed[:-1], out=run[1:])
    at = np.arange(n)
    first = np.maximum.accumulate(np.where(run, at, 0))  # where each member's run of equal slots starts
    offset = (at - first) * (sums / sizes).repeat(sizes)
    # each group's LLM work per bin before it moves (running sums in member order, as bincount)
    held = np.bincount(g0 + cur, weights=w, minlength=len(sizes) * bins).reshape(len(sizes), bins)
    # small groups work on plain lists: their members only, concatenated in the same group order
    small = sizes <= _SMALL_GROUP
    in_small = small.repeat(sizes)
    cur_l, w_l, slots_l, offset_l = (x[in_small].tolist() for x in (cur, w, slots, offset))
    held_l = held.tolist()
    small_ends = (sizes * small).cumsum().tolist()
    spans = [(e - m, e) if sm else span for span, m, e, sm in zip(spans, sizes.tolist(), small_ends, small.tolist())]
    small = small.tolist()

    # LLM load minus target per bin so far (a list: small groups update it element by element)
    loads = (np.bincount(bin_of[e_idx], weights=llm[e_idx], minlength=bins) - llm_target).tolist()
    # heaviest groups first, ties in signature order (a stable sort of −sums, as the groups' list.sort)
    by_weight = sorted(range(len(spans)), key=sums.tolist().__getitem__, reverse=True)
    for _sweep in range(sweeps):
        for g in by_weight:
            s, e = spans[g]
            if small[g]:
                ww = w_l[s:e]
                sl = slots_l[s:e]
                was = held_l[g]
                for b in set(sl):
                    loads[b] -= was[b]
                key = [loads[b] + o for b, o in zip(sl, offset_l[s:e])]
                new = [0] * (e - s)
                # heaviest member to the lowest key; reverse=True keeps ties in order (stable)
                for t, j in zip(sorted(range(e - s), key=ww.__getitem__, reverse=True),
                                sorted(range(e - s), key=key.__getitem__)):
                    new[t] = sl[j]
                cur_l[s:e] = new
                added: dict[int, float] = {}
                for b, x in zip(new, ww):  # as bincount: a running sum per bin from 0.0
                    added[b] = added.get(b, 0.0) + x
                for b, x in added.items():
                    loads[b] += x
                held_l[g] = added  # what a next sweep removes
            else:
                la = np.array(loads)
                la -= held[g]
                c, ww, sl = cur[s:e], w[s:e], slots[s:e]  # views: c is re-matched in place
                c[(-ww).argsort(kind="stable")] = sl[(la[sl] + offset[s:e]).argsort(kind="stable")]
                held[g] = np.bincount(c, weights=ww, minlength=bins)  # what a next sweep removes
                la += held[g]
                loads = la.tolist()
    cur[in_small] = cur_l
    bin_of[members] = cur


def _bins_of(idx: np.ndarray, bin_of: np.ndarray, bins: int, col: np.ndarray) -> tuple[list[list[int]], list[float]]:
    """Members per bin, each in the order of ``idx`` (a stable sort instead of appending one by
    one), and per bin the sum of ``col`` over its members (as ``col[members].sum()``: the same
    elements, contiguous, in the same order)."""
    srt = idx[_stable_order(bin_of[idx], max(bins - 1, 1).bit_length())]
    ends = np.bincount(bin_of[idx], minlength=bins).cumsum().tolist()
    flat, vals = srt.tolist(), col[srt]
    starts = [0, *ends[:-1]]
    return [flat[s:e] for s, e in zip(starts, ends)], [float(np.add.reduce(vals[s:e])) for s, e in zip(starts, ends)]


def _balance(table: WorkTable, bins: int, polish_iters: int, forward: bool, targets: np.ndarray | None = None,
             encoder_iters: int = 8, sweeps: int = 1, sample_cap: int = 48) -> list[list[int]]:
    """Encoder work per modality even (or at ``targets``) first, then LLM work, over ``bins`` bins.

    ``targets`` is (bins, K+1), each column's mean 1: bin b's share of each column.

    (a) samples with encoder work go longest-first (normalised encoder sum) to the bin furthest
        below its target, then a local search evens the encoder columns;
    (b) LLM work is then evened without touching (a): inside each group of interchangeable
        samples (same encoder-work signature), samples are re-matched to the group's slots,
        heaviest LLM sample to the slot of the bin with the largest LLM deficit; encoder-free
        samples then fill LLM deficits, longest first;
    (c) a short local search on all columns polishes the result; without targets and with
        ``forward`` the bins are first ordered heaviest-LLM first and LLM work may only move to
        later bins (deferral). With targets bin order is the targets' and the search aims at them.
    """
    n = len(table)
    enc = table.encoder
    llm = table.llm
    k = enc.shape[1]
    tgt = np.ones((bins, k + 1)) if targets is None else targets
    llm_target = tgt[:, -1] * (llm.sum() / bins)  # absolute LLM work each bin should get
    has_enc = np.add.reduce(enc, axis=1) > 0
    bin_of = np.full(n, -1, dtype=np.int64)
    e_idx = has_enc.nonzero()[0]
    if len(e_idx):
        # (a) longest-first on the normalised encoder sum, then local search on the encoder columns
        enc_norm, keep = _normalise(enc.take(e_idx, axis=0), bins)
        enc_tgt = tgt[:, :k][:, keep]
        key = np.add.reduce(enc_norm, axis=1)
        local = greedy(desc(key), key.tolist(), bins, targets=enc_tgt.mean(axis=1))
        refine(local, enc_norm, max_iters=encoder_iters, target=enc_tgt, sample_cap=sample_cap)
        idx, ends = gather(local)
        bin_of[e_idx[idx]] = np.arange(bins).repeat([len(m) for m in local])
        # (b) re-match LLM work inside groups of interchangeable samples
        _rematch_llm(enc_norm, e_idx, llm, bin_of, llm_target, sweeps)
    members_of, llm_of = _bins_of(e_idx, bin_of, bins, llm)
    free = (~has_enc).nonzero()[0]
    if len(free):
        # the bin with the largest LLM deficit takes the next-longest encoder-free sample
        heap = [(x - t, len(m), b) for b, (m, x, t) in enumerate(zip(members_of, llm_of, llm_target.tolist()))]
        heapq.heapify(heap)
        append = [m.append for m in members_of]
        replace = heapq.heapreplace
        order = free[desc(llm[free])]
        for i, wi in zip(order.tolist(), llm[order].tolist()):
            deficit, cnt, b = heap[0]
            append[b](i)
            replace(heap, (deficit + wi, cnt + 1, b))
    if n >= bins and any(not m for m in members_of):
        _fill_empty(members_of)
    w_all, keep_all = _normalise(table.matrix, bins)
    if targets is not None:
        refine(members_of, w_all, max_iters=polish_iters, target=tgt[:, keep_all], sample_cap=sample_cap)
    elif forward:
        # heaviest-LLM bin first: every bin over the LLM target then precedes every one under it,
        # so the remaining excess can be deferred to later bins only
        gathered = gather(members_of)  # once, for both sums below
        llm_of, loads = bin_sums(llm, members_of, gathered), bin_sums(w_all, members_of, gathered)
        order = sorted(range(bins), key=lambda b: -llm_of[b])  # stable, as list.sort
        members_of = [members_of[b] for b in order]
        if llm.sum() > 0:
            col = w_all.shape[1] - 1
            refine(members_of, w_all, max_iters=polish_iters, cols=[col], forward_col=col, sample_cap=sample_cap,
                   loads=[loads[b] for b in order])
    else:
        refine(members_of, w_all, max_iters=polish_iters, sample_cap=sample_cap)
    return members_of


def _fill_empty(members: list[list[int]]) -> None:
    # only reachable with fewer samples than encoder bins plus zero-work samples: move one sample
    # from the most populated microbatch so the runtime never sees an empty microbatch
    for m in members:
        if not m:
            donor = max(range(len(members)), key=lambda j: len(members[j]))
            m.append(members[donor].pop())


def split_replicas(table: WorkTable, replicas: int, polish_iters: int = 8, min_samples: int = 1) -> list[np.ndarray]:
    """Level 1: sample positions per replica with even encoder (per modality) and LLM work.

    Every replica gets at least ``min_samples`` samples (when there are enough), so it can fill
    its microbatches: a giant sample would otherwise leave its replica with nothing else.
    """
    members = _balance(table, replicas, polish_iters, forward=False)
    if len(table) >= replicas * min_samples and any(len(m) < min_samples for m in members):
        key = _normalise(table.matrix, replicas)[0].sum(axis=1)
        for m in members:
            while len(m) < min_samples:
                donor = max(members, key=len)
                lightest = min(donor, key=lambda i: key[i])
                donor.remove(lightest)
                m.append(lightest)
    return [np.asarray(m, dtype=np.int64) for m in members]


_MB_POLISH_ITERS = 4  # local-search steps polishing one replica's microbatches


def form_microbatches(table: WorkTable, microbatches: int, polish_iters: int = _MB_POLISH_ITERS,
                      profile: np.ndarray | None = None) -> list[list[int]]:
    """Level 2 inside one replica (positions into ``table``): even encoder work first, then LLM
    work, with the remaining excess deferred to later microbatches; or, with ``profile``, each
    microbatch k at its row's shares."""
    targets = None if profile is None else check_profile(profile, microbatches, table.matrix.shape[1])
    return _balance(table, microbatches, polish_iters, forward=True, targets=targets)


def check_profile(profile, microbatches: int, columns: int) -> np.ndarray:
    """``profile`` as a (microbatches, columns) array with every column's mean 1, or ValueError."""
    p = np.asarray(profile, dtype=np.float64)
    if p.ndim == 1:
        p = np.repeat(p[:, None], columns, axis=1)
    if p.shape != (microbatches, columns):
        raise ValueError(f"profile must have shape ({microbatches}, {columns}) (microbatches × encoder columns + "
                         f"LLM) or ({microbatches},), got {p.shape}")
    if not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError("profile shares must be finite and > 0 (every microbatch gets some work)")
    return p / p.mean(axis=0)


def hierarchical(table: WorkTable, replicas: int, microbatches: int, seed: int = 0,
                 profile: np.ndarray | None = None) -> Assignment:
    """Hierarchical assignment (module docstring); ``seed`` is unused (the policy is deterministic)."""
    if replicas < 1 or microbatches < 1:
        raise ValueError(f"need >= 1 replica and >= 1 microbatch, got {replicas} x {microbatches}")
    if len(table) == 0:
        raise ValueError("the global batch is empty")
    targets = None if profile is None else check_profile(profile, microbatches, table.encoder.shape[1] + 1)
    out: Assignment = []
    for pos in split_replicas(table, replicas, min_samples=microbatches):
        # the replica's rows (as table.take(pos); take gathers rows faster than fancy indexing)
        sub = WorkTable(table.encoder.take(pos, axis=0), table.llm[pos], table.tokens[pos], table.modalities)
        local = (_balance(sub, microbatches, _MB_POLISH_ITERS, forward=True, targets=targets) if len(pos)
                 else [[] for _ in range(microbatches)])
        # every microbatch's positions sorted, with one sort: microbatch-major keys
        idx, ends = gather(local)
        mb_of = np.arange(microbatches).repeat([len(m) for m in local]) * len(table)
        key = mb_of + pos[idx]
        key.sort()
        key -= mb_of
        out.append([key[s:e] for s, e in zip([0, *ends[:-1]], ends)])
    return out
