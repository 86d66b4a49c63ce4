"""Per-rank work, K/V traffic and K/V memory of a CP assignment under a mask.

Two K/V exchanges (both implemented in ``amylum.parallel.cp_exchange``; the planner's cost
model prices the all-gather, ``allgather_kv_time`` and ``cost.CostModel.kv_exchange_time``):

* all-gather: every rank receives every other rank's K/V (the whole sequence is held);
* sparse (mask-aware): a rank receives only the key blocks that hold a key its queries may
  see. :func:`received_keys` is the one definition of that set: the runtime exchanges
  exactly it, and :func:`rank_work` counts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cp_blocks import CPAssignment, block_entries, block_tokens, block_weights, flat_intervals, key_tile_visits
from .cp_work import CPWorkModel, default_work_model
from .spec import DTYPE_BYTES, ClusterSpec


@dataclass(frozen=True)
class RankWork:
    """Per-rank figures of an assignment; times in the work model's unit."""

    tokens: list[int]
    attn_entries: list[float]
    compute: list[float]  # fwd + bwd of the layer: attention + per-token part
    kv_tokens_needed: list[int]  # distinct key positions this rank's queries may see
    kv_bytes_allgather: list[float]  # received per layer (K and V) under all-gather
    kv_bytes_sparse: list[float]  # received when only the keys a rank's queries see are sent
    kv_peak_allgather: list[float]  # K/V bytes held during attention (all-gather: the whole sequence)
    kv_peak_sparse: list[float]

    @staticmethod
    def _ratio(xs) -> float:
        mean = sum(xs) / len(xs)
        return max(xs) / mean if mean > 0 else 1.0

    @property
    def imbalance(self) -> float:
        """max / mean of per-rank compute (1.0 = perfect)."""
        return self._ratio(self.compute)

    @property
    def attn_imbalance(self) -> float:
        return self._ratio(self.attn_entries)

    @property
    def makespan(self) -> float:
        return max(self.compute)


def needed_keys(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray, seq_len: int) -> np.ndarray:
    """Bool (seq_len,) of the keys any query in ``idx`` may attend (union of intervals)."""
    diff = np.bincount(lo[idx], minlength=seq_len + 1) - np.bincount(hi[idx] + 1, minlength=seq_len + 1)
    return np.cumsum(diff[:seq_len]) > 0


def received_keys(assignment: CPAssignment, lo: np.ndarray, hi: np.ndarray, rank: int,
                  kv_block: int | None = None, *, owner: np.ndarray | None = None) -> np.ndarray:
    """Sorted flat positions whose K/V ``rank`` receives under the mask-aware (sparse) exchange.

    Keys travel in whole blocks of ``kv_block`` positions (default the assignment's block
    size, a kernel tile): every block holding a key that ``rank``'s queries may see and that
    another rank holds is received, minus the positions ``rank`` holds itself. ``owner``: the
    assignment's ``owner()``, passed when calling this for every rank.
    """
    n = assignment.seq_len
    kv_block = kv_block or assignment.block_size
    owner = assignment.owner() if owner is None else owner
    remote = owner != rank
    need = needed_keys(lo, hi, assignment.token_indices(rank), n) & remote
    nb = -(-n // kv_block)
    blocks = np.pad(need, (0, nb * kv_block - n)).reshape(nb, kv_block).any(1)
    return np.nonzero(np.repeat(blocks, kv_block)[:n] & remote)[0]


def _call_cost(model: CPWorkModel, lo: np.ndarray, hi: np.ndarray, block_size: int, blocks) -> float:
    """A rank's per-call attention cost beyond its blocks' sum (zero without a GPU kernel fit)."""
    if not blocks or not model.tiled:
        return 0.0
    visits = key_tile_visits(lo, hi, block_size, blocks, model.tile) if model.attn_key_visits else 0.0
    return model.call_overhead(lo.size) + model.attn_key_visits * visits


def rank_work(assignment: CPAssignment, spec_or_lo, hi=None, *, model: CPWorkModel | None = None,
              kv_bytes_per_token: float = 2 * 8 * 128 * DTYPE_BYTES, kv_block: int | None = None,
              traffic: bool = True) -> RankWork:
    """Per-rank work, K/V traffic and K/V memory of ``assignment`` under a mask.

    ``kv_bytes_per_token``: K and V of one token over all KV heads (default: 8 heads × 128
    dims, bf16). ``kv_block``: granularity of the sparse variant (default the assignment's
    block size: whole key blocks are sent). ``traffic=False`` skips the O(cp·S) traffic part
    (its lists are then empty). All-gather figures count real tokens; the runtime's
    collective also moves the padding up to the largest rank's count (see
    ``amylum.parallel.cp_exchange``).
    """
    lo, hi = flat_intervals(spec_or_lo, hi)
    n = lo.size
    if n != assignment.seq_len:
        raise ValueError(f"assignment covers {assignment.seq_len} tokens, the mask has {n}")
    model = model or default_work_model()
    b_entries = block_entries(lo, hi, assignment.block_size)
    b_tokens = block_tokens(n, assignment.block_size)
    b_weights = block_weights(lo, hi, assignment.block_size, model)
    tokens = [int(b_tokens[list(r)].sum()) for r in assignment.blocks]
    entries = [float(b_entries[list(r)].sum()) for r in assignment.blocks]
    # all-gather CP: every rank's call runs over the whole sequence's keys
    compute = [float(b_weights[list(r)].sum()) + _call_cost(model, lo, hi, assignment.block_size, r)
               for r in assignment.blocks]
    needed, ag, sp, pk_ag, pk_sp = [], [], [], [], []
    if traffic:
        owner = assignment.owner()
        for r, held in enumerate(tokens):
            recv = received_keys(assignment, lo, hi, r, kv_block, owner=owner).size
            needed.append(int(needed_keys(lo, hi, assignment.token_indices(r), n).sum()))
            ag.append((n - held) * kv_bytes_per_token)
            sp.append(recv * kv_bytes_per_token)
            pk_ag.append(n * kv_bytes_per_token)
            pk_sp.append((held + recv) * kv_bytes_per_token)
    return RankWork(tokens, entries, compute, needed, ag, sp, pk_ag, pk_sp)


def allgather_kv_time(assignment: CPAssignment, cluster: ClusterSpec, kv_bytes_per_token: float, *,
                      inter_node: bool = False) -> float:
    """Seconds of one layer's K/V all-gather (forward; the backward reduce-scatter costs the same).

    Collectives move equal-sized buffers, so every rank's part is padded to the largest count.
    """
    cp = assignment.cp
    if cp <= 1:
        return 0.0
    bw = cluster.inter_node_bw if inter_node else cluster.intra_node_bw
    per_rank = max(assignment.token_counts()) * kv_bytes_per_token
    return (cp - 1) * per_rank / (bw * 0.8) + cluster.p2p_latency_s * (cp - 1)

