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

from .microbatch_search import desc, greedy, refine
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
    return (w[:, keep] * (bins / tot[keep]) if keep.any() else np.zeros((len(w), 0))), keep


def _signatures(enc_norm: np.ndarray) -> np.ndarray:
    """Group id per sample: equal ids ⇔ same bucket of encoder work in every modality."""
    with np.errstate(divide="ignore"):
        q = np.where(enc_norm > 0, np.floor(np.log(np.maximum(enc_norm, 1e-300)) / _BUCKET), -(2 ** 40))
    return np.unique(q.astype(np.int64), axis=0, return_inverse=True)[1].reshape(-1)


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
    has_enc = enc.sum(axis=1) > 0
    bin_of = np.full(n, -1, dtype=np.int64)
    e_idx = np.flatnonzero(has_enc)
    if len(e_idx):
        # (a) longest-first on the normalised encoder sum, then local search on the encoder columns
        enc_norm, keep = _normalise(enc[e_idx], bins)
        enc_tgt = tgt[:, :k][:, keep]
        key = enc_norm.sum(axis=1)
        local = greedy(desc(key), key.tolist(), bins, targets=enc_tgt.mean(axis=1))
        refine(local, enc_norm, max_iters=encoder_iters, target=enc_tgt, sample_cap=sample_cap)
        for b, m in enumerate(local):
            bin_of[e_idx[m]] = b
        # (b) re-match LLM work inside groups of interchangeable samples
        gid = _signatures(enc_norm)
        order = np.argsort(gid, kind="stable")
        cuts = np.flatnonzero(np.diff(gid[order])) + 1
        groups = [e_idx[g] for g in np.split(order, cuts) if len(g) > 1]
        groups.sort(key=lambda g: -float(llm[g].sum()))
        # LLM load minus target so far; groups placed later see what earlier ones took
        loads = np.bincount(bin_of[e_idx], weights=llm[e_idx], minlength=bins) - llm_target
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
        # the bin with the largest LLM deficit takes the next-longest encoder-free sample
        heap = [((float(llm[m].sum()) if m else 0.0) - float(llm_target[b]), len(m), b)
                for b, m in enumerate(members_of)]
        heapq.heapify(heap)
        wl = llm.tolist()
        for i in free[desc(llm[free])].tolist():
            deficit, cnt, b = heap[0]
            members_of[b].append(i)
            heapq.heapreplace(heap, (deficit + wl[i], cnt + 1, b))
    if n >= bins and any(not m for m in members_of):
        _fill_empty(members_of)
    w_all, keep_all = _normalise(table.matrix, bins)
    if targets is not None:
        refine(members_of, w_all, max_iters=polish_iters, target=tgt[:, keep_all], sample_cap=sample_cap)
    elif forward:
        # heaviest-LLM bin first: every bin over the LLM target then precedes every one under it,
        # so the remaining excess can be deferred to later bins only
        members_of.sort(key=lambda m: -float(llm[m].sum()))
        if llm.sum() > 0:
            col = w_all.shape[1] - 1
            refine(members_of, w_all, max_iters=polish_iters, cols=[col], forward_col=col, sample_cap=sample_cap)
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
    if len(table) >= replicas * min_samples:
        key = _normalise(table.matrix, replicas)[0].sum(axis=1)
        for m in members:
            while len(m) < min_samples:
                donor = max(members, key=len)
                lightest = min(donor, key=lambda i: key[i])
                donor.remove(lightest)
                m.append(lightest)
    return [np.asarray(m, dtype=np.int64) for m in members]


def form_microbatches(table: WorkTable, microbatches: int, polish_iters: int = 4,
                      profile: np.ndarray | None = None) -> list[list[int]]:
    """Level 2 inside one replica (positions into ``table``): even encoder work first, then LLM
    work, with the remaining excess deferred to later microbatches; or, with ``profile``, each
    microbatch k at its row's shares."""
    targets = None if profile is None else check_profile(profile, microbatches, table.matrix.shape[1])
    # aiming at uneven targets moves more samples than polishing an even split: more search steps
    iters = polish_iters
    return _balance(table, microbatches, iters, forward=True, targets=targets)


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
    if profile is not None:
        check_profile(profile, microbatches, table.matrix.shape[1])
    out: Assignment = []
    for pos in split_replicas(table, replicas, min_samples=microbatches):
        local = (form_microbatches(table.take(pos), microbatches, profile=profile) if len(pos)
                 else [[] for _ in range(microbatches)])
        out.append([np.sort(pos[np.asarray(m, dtype=np.int64)]) if m else np.zeros(0, np.int64) for m in local])
    return out
