"""Microbatch assignment policies: which samples of one global batch go to which DP replica and
which microbatch, as swappable pure functions.

Every policy has the signature ``policy(table, replicas, microbatches, seed=0) -> Assignment``,
where ``table`` is the global batch's :class:`~amylum.planner.workload.WorkTable` and the result
is ``assignment[replica][microbatch]`` = sorted positions into the table. A policy only permutes
the global batch: every sample lands in exactly one microbatch of this iteration (none dropped,
duplicated or moved to another iteration), so the gradient is unchanged when the loss is
normalised by the iteration's token count. With at least ``replicas × microbatches`` samples no
microbatch is empty.

Policies:

- ``dataset_order``: contiguous, equal-count chunks in the given order (the naive baseline);
- ``random``: the same after a seeded shuffle;
- ``sorted_greedy``: longest first by LLM tokens, each sample to the microbatch with the fewest tokens;
- ``lpt``: longest-processing-time first on total work (encoder + LLM summed into one number);
- ``hierarchical`` (amylum's, after Entrain's public description; see docs/microbatching.md):
  1. split across replicas so every replica's encoder work (per modality) and LLM work are each
     close to 1/R of the batch's (every replica gets at least M samples);
  2. inside a replica, first even the encoder work per microbatch (samples with encoder work
     only: longest-first, then local search on the encoder columns), then even the LLM work
     without undoing that: samples whose encoder work agrees to ~5 % are re-matched among their
     own slots, encoder-free samples fill LLM deficits, and the microbatches are ordered
     heaviest-LLM first so a last short local search may only *defer* LLM excess to later
     microbatches of the same iteration.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from .workload import WorkTable, cv

Assignment = list[list[np.ndarray]]
Policy = Callable[..., Assignment]


# ---------------------------------------------------------------------------------------------
# helpers


def _check_args(table: WorkTable, replicas: int, microbatches: int) -> None:
    if replicas < 1 or microbatches < 1:
        raise ValueError(f"need >= 1 replica and >= 1 microbatch, got {replicas} x {microbatches}")
    if len(table) == 0:
        raise ValueError("the global batch is empty")


def _as_assignment(members: list[list[int]], replicas: int, microbatches: int) -> Assignment:
    """Flat bins (replica-major) → [replica][microbatch] sorted index arrays."""
    return [[np.sort(np.asarray(members[r * microbatches + k], dtype=np.int64)) for k in range(microbatches)]
            for r in range(replicas)]


def _chunks(order: np.ndarray, replicas: int, microbatches: int) -> Assignment:
    parts = np.array_split(order, replicas * microbatches)
    return _as_assignment([list(p) for p in parts], replicas, microbatches)


def _greedy(order, weights: list[float], bins: int) -> list[list[int]]:
    """List scheduling: each sample (in ``order``) to the bin with the least weight so far.

    Ties go to the bin with fewer samples, so with >= ``bins`` samples no bin stays empty even
    when weights are zero. Max bin weight ≤ mean + max sample weight (Graham's bound).
    """
    heap = [(0.0, 0, b) for b in range(bins)]
    members: list[list[int]] = [[] for _ in range(bins)]
    for i in np.asarray(order).tolist():  # Python ints: indexing lists with NumPy scalars is slow
        load, cnt, b = heap[0]
        members[b].append(i)
        heapq.heapreplace(heap, (load + weights[i], cnt + 1, b))
    return members


def _desc(key: np.ndarray) -> np.ndarray:
    # stable: equal keys keep dataset order, so policies are deterministic
    return np.argsort(-key, kind="stable")


# ---------------------------------------------------------------------------------------------
# baselines


def dataset_order(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    return _chunks(np.arange(len(table)), replicas, microbatches)


def random(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    return _chunks(np.random.default_rng(seed).permutation(len(table)), replicas, microbatches)


def sorted_greedy(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    bins = replicas * microbatches
    return _as_assignment(_greedy(_desc(table.tokens), table.tokens.tolist(), bins), replicas, microbatches)


def lpt(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    tot = table.total
    return _as_assignment(_greedy(_desc(tot), tot.tolist(), replicas * microbatches), replicas, microbatches)


# ---------------------------------------------------------------------------------------------
# hierarchical


def _normalise(w: np.ndarray, bins: int) -> np.ndarray:
    """Scale each column so one bin's fair share is 1; drop columns that are zero everywhere."""
    tot = w.sum(axis=0)
    keep = tot > 0
    return w[:, keep] * (bins / tot[keep]) if keep.any() else np.zeros((len(w), 0))


def _refine(members: list[list[int]], w: np.ndarray, *, max_iters: int, cols=None,
            forward_col: int | None = None, sample_cap: int = 96, tol: float = 1e-3,
            max_cells: int = 8) -> None:
    """Local search on Σ_bins Σ_columns (load − 1)² by moving or exchanging samples between bins.

    ``w`` is normalised (fair share 1 per bin and column). Each step takes the worst (bin,
    column) cell among ``cols`` (default: all) and its most opposite bins in that column, and
    applies the best move/exchange between the first pair that has an improving one. The
    objective spans every column, so fixing one column never buys imbalance in another. With
    ``forward_col`` set, that column's work may only move from an earlier bin to a later one
    (in-iteration deferral). No move empties a bin.
    """
    nb, d = len(members), w.shape[1]
    if d == 0 or nb < 2:
        return
    cols = list(range(d)) if cols is None else list(cols)
    loads = np.array([w[m].sum(axis=0) if m else np.zeros(d) for m in members])
    for _ in range(max_iters):
        dev = loads - 1.0
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


# relative width of an encoder-work bucket: samples whose encoder work (per modality) agrees to
# within ~5 % are treated as interchangeable when LLM work is rebalanced
_BUCKET = np.log(1.05)


def _signatures(enc_norm: np.ndarray) -> np.ndarray:
    """Group id per sample: equal ids ⇔ same bucket of encoder work in every modality."""
    with np.errstate(divide="ignore"):
        q = np.where(enc_norm > 0, np.floor(np.log(np.maximum(enc_norm, 1e-300)) / _BUCKET), -(2 ** 40))
    return np.unique(q.astype(np.int64), axis=0, return_inverse=True)[1].reshape(-1)


def _snake(n: int, bins: int) -> np.ndarray:
    """Bin of the i-th item when dealing 0,1,…,B−1, B−1,…,0, 0,1,… (heavy items pair with light)."""
    i = np.arange(n)
    pos, rnd = i % bins, i // bins
    return np.where(rnd % 2 == 0, pos, bins - 1 - pos)


def _balance(table: WorkTable, bins: int, polish_iters: int, forward: bool, encoder_iters: int = 8,
             sweeps: int = 1, sample_cap: int = 48) -> list[list[int]]:
    """Encoder work per modality even first, then LLM work, over ``bins`` bins.

    (a) samples with encoder work, sorted by encoder signature (heaviest first) and LLM work, are
        dealt in snake order: every bin gets its share of each signature, so each modality's
        encoder work is even up to one sample;
    (b) LLM work is then evened without touching (a): inside each signature group, samples are
        re-matched to the group's slots, heaviest LLM sample to the slot of the bin with the
        least LLM work (two sweeps over the groups); encoder-free samples then fill LLM deficits,
        longest first;
    (c) a short local search on all columns polishes the result; with ``forward`` the bins are
        first ordered heaviest-LLM first and LLM work may only move to later bins (deferral).
    """
    n = len(table)
    enc = table.encoder
    llm = table.llm
    has_enc = enc.sum(axis=1) > 0
    bin_of = np.full(n, -1, dtype=np.int64)
    e_idx = np.flatnonzero(has_enc)
    if len(e_idx):
        # (a) longest-first on the normalised encoder sum, then local search on the encoder columns
        enc_norm = _normalise(enc[e_idx], bins)
        key = enc_norm.sum(axis=1)
        local = _greedy(_desc(key), key.tolist(), bins)
        _refine(local, enc_norm, max_iters=encoder_iters, sample_cap=sample_cap)
        for b, m in enumerate(local):
            bin_of[e_idx[m]] = b
        # (b) re-match LLM work inside groups of interchangeable samples
        gid = _signatures(enc_norm)
        order = np.argsort(gid, kind="stable")
        cuts = np.flatnonzero(np.diff(gid[order])) + 1
        groups = [e_idx[g] for g in np.split(order, cuts) if len(g) > 1]
        groups.sort(key=lambda g: -float(llm[g].sum()))
        loads = np.bincount(bin_of[e_idx], weights=llm[e_idx], minlength=bins)
        for _sweep in range(sweeps):
            for members in groups:
                w = llm[members]
                loads -= np.bincount(bin_of[members], weights=w, minlength=bins)
                slots = np.sort(bin_of[members])
                # the j-th slot of a bin expects j average members before it: spreads multi-slot bins
                first = np.searchsorted(slots, slots, side="left")
                key = loads[slots] + (np.arange(len(slots)) - first) * (w.sum() / len(w))
                bin_of[members[np.argsort(-w, kind="stable")]] = slots[np.argsort(key, kind="stable")]
                loads += np.bincount(bin_of[members], weights=w, minlength=bins)
    members_of: list[list[int]] = [[] for _ in range(bins)]
    for i, b in zip(e_idx.tolist(), bin_of[e_idx].tolist()):
        members_of[b].append(i)
    free = np.flatnonzero(~has_enc)
    if len(free):
        heap = [(float(llm[m].sum()) if m else 0.0, len(m), k) for k, m in enumerate(members_of)]
        heapq.heapify(heap)
        wl = llm.tolist()
        for i in free[_desc(llm[free])].tolist():
            load, cnt, k = heap[0]
            members_of[k].append(i)
            heapq.heapreplace(heap, (load + wl[i], cnt + 1, k))
    if n >= bins and any(not m for m in members_of):
        _fill_empty(members_of)
    w_all = _normalise(table.matrix, bins)
    if forward:
        # heaviest-LLM bin first: every bin over the LLM target then precedes every one under it,
        # so the remaining excess can be deferred to later bins only
        members_of.sort(key=lambda m: -float(llm[m].sum()))
        if llm.sum() > 0:
            col = w_all.shape[1] - 1
            _refine(members_of, w_all, max_iters=polish_iters, cols=[col], forward_col=col,
                    sample_cap=sample_cap)
    else:
        _refine(members_of, w_all, max_iters=polish_iters, sample_cap=sample_cap)
    return members_of


def split_replicas(table: WorkTable, replicas: int, polish_iters: int = 8, min_samples: int = 1) -> list[np.ndarray]:
    """Level 1: sample positions per replica with even encoder (per modality) and LLM work.

    Every replica gets at least ``min_samples`` samples (when there are enough), so it can fill
    its microbatches: a giant sample would otherwise leave its replica with nothing else.
    """
    members = _balance(table, replicas, polish_iters, forward=False)
    if len(table) >= replicas * min_samples:
        key = _normalise(table.matrix, replicas).sum(axis=1)
        for m in members:
            while len(m) < min_samples:
                donor = max(members, key=len)
                lightest = min(donor, key=lambda i: key[i])
                donor.remove(lightest)
                m.append(lightest)
    return [np.asarray(m, dtype=np.int64) for m in members]


def form_microbatches(table: WorkTable, microbatches: int, polish_iters: int = 4) -> list[list[int]]:
    """Level 2 inside one replica (positions into ``table``): even encoder work first, then LLM
    work, with the remaining excess deferred to later microbatches."""
    return _balance(table, microbatches, polish_iters, forward=True)


def _fill_empty(members: list[list[int]]) -> None:
    # only reachable with fewer samples than encoder bins plus zero-work samples: move one sample
    # from the most populated microbatch so the runtime never sees an empty microbatch
    for k, m in enumerate(members):
        if not m:
            donor = max(range(len(members)), key=lambda j: len(members[j]))
            m.append(members[donor].pop())


def hierarchical(table: WorkTable, replicas: int, microbatches: int, seed: int = 0) -> Assignment:
    _check_args(table, replicas, microbatches)
    out: Assignment = []
    for pos in split_replicas(table, replicas, min_samples=microbatches):
        local = form_microbatches(table.take(pos), microbatches) if len(pos) else [[] for _ in range(microbatches)]
        out.append([np.sort(pos[np.asarray(m, dtype=np.int64)]) if m else np.zeros(0, np.int64) for m in local])
    return out


POLICIES: dict[str, Policy] = {
    "dataset_order": dataset_order,
    "random": random,
    "sorted_greedy": sorted_greedy,
    "lpt": lpt,
    "hierarchical": hierarchical,
}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown microbatch policy {name!r}; choose from {sorted(POLICIES)}")
    return POLICIES[name]


# ---------------------------------------------------------------------------------------------
# checks and metrics


def check_assignment(assignment: Assignment, n: int, replicas: int | None = None,
                     microbatches: int | None = None) -> None:
    """Raise ValueError unless the assignment is a partition of range(n) of the expected shape."""
    if replicas is not None and len(assignment) != replicas:
        raise ValueError(f"assignment has {len(assignment)} replicas, expected {replicas}")
    counts = np.zeros(n, dtype=np.int64)
    for r, mbs in enumerate(assignment):
        if microbatches is not None and len(mbs) != microbatches:
            raise ValueError(f"replica {r} has {len(mbs)} microbatches, expected {microbatches}")
        for k, idx in enumerate(mbs):
            idx = np.asarray(idx, dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"replica {r} microbatch {k} holds positions outside [0, {n})")
            np.add.at(counts, idx, 1)
    if (counts != 1).any():
        dup, miss = np.flatnonzero(counts > 1), np.flatnonzero(counts == 0)
        raise ValueError(f"not a partition of the global batch: {len(dup)} samples assigned more than once "
                         f"(e.g. {dup[:5].tolist()}), {len(miss)} never (e.g. {miss[:5].tolist()})")


def microbatch_loads(table: WorkTable, assignment: Assignment) -> np.ndarray:
    """(replicas, microbatches, K+1) work per microbatch: encoder columns then LLM."""
    m = table.matrix
    return np.array([[m[idx].sum(axis=0) for idx in mbs] for mbs in assignment])


def balance(table: WorkTable, assignment: Assignment) -> dict[str, float]:
    """CV across all microbatches of encoder work (all encoders summed, and per modality) and LLM
    work; also CV of per-replica totals."""
    loads = microbatch_loads(table, assignment)
    flat = loads.reshape(-1, loads.shape[-1])
    out = {"encoder": float(cv(flat[:, :-1].sum(axis=1))), "llm": float(cv(flat[:, -1]))}
    for j, mname in enumerate(table.modalities):
        out[f"encoder.{mname}"] = float(cv(flat[:, j]))
    rep = loads.sum(axis=1)
    out["replica.encoder"] = float(cv(rep[:, :-1].sum(axis=1)))
    out["replica.llm"] = float(cv(rep[:, -1]))
    return out
