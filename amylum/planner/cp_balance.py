"""Context-parallel token assignment: which tokens of a long sequence each CP rank holds.

Pure functions over the O(S) key intervals of a mask (``amylum.attention.mask_spec``: query
``q`` may attend keys ``lo[q]..hi[q]``). No torch.distributed, no GPU: a plan for 128k tokens
on 32 ranks takes milliseconds.

The sequence is cut into blocks of ``block_size`` tokens (the last may be shorter). A rank
holds any set of blocks, not necessarily contiguous, and ranks may hold different token
counts; the runtime all-gathers K/V, so any assignment is legal (positions stay global).

Policies (``POLICIES``):

* ``uniform``   contiguous, equal block counts (plain sequence split).
* ``zigzag``    2·cp chunks, rank i takes chunks i and 2·cp−1−i (balances a causal triangle).
* ``makespan_attn``  Cornstarch's ``makespan_min``: LPT over blocks weighted by attention
  work only (its bitfield variant dropped the per-block linear term).
* ``makespan``  the same LPT, each block weighted by the *whole layer*: allowed attention
  entries × (forward + backward cost per entry) + tokens × (forward + backward linear/MLP
  cost per token). With unequal token counts per rank the linear term matters.
* ``contiguous``  amylum's, for mask-aware K/V exchange: contiguous runs of blocks with the
  smallest maximum whole-layer load. Keeps locality (few remote keys needed under sparse
  masks such as packed rows), at some cost in balance when blocks per rank are few.
* ``balanced``  amylum's: ``makespan`` followed by move/swap refinement between the most and
  less loaded ranks (never worse than LPT, by construction), and an exact branch and bound
  when there are few blocks.

Why blocks and not tokens: attention kernels work in tiles of 128 queries, and block
granularity keeps each rank's queries tile-aligned; a finer split buys balance only where
blocks are few per rank, which ``balanced`` handles with the exact search.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from .layers import transformer_layer
from .spec import DTYPE_BYTES, ClusterSpec

POLICIES = ("uniform", "zigzag", "makespan_attn", "makespan", "balanced", "contiguous")
EXACT_MAX_BLOCKS = 14  # branch and bound stays well under a second up to here (tested sizes)


# ---- work model --------------------------------------------------------------------------

@dataclass(frozen=True)
class CPWorkModel:
    """Cost of one transformer layer per allowed attention entry and per token (any time unit).

    ``attn_entry_*``: one (query, key) pair of the mask, QKᵀ and PV for all heads.
    ``token_*``: everything else of the layer per token (projections, MLP, norms).
    Backward of attention is ≈ 2× its forward (dQ, dK, dV; the cost model's convention, flash
    adds a recompute of the scores that a GPU profile folds into the rate); backward of a
    linear layer is 1× for the input gradient plus 1× for the weight gradient if trained.
    """

    attn_entry_fwd: float = 1.0
    attn_entry_bwd: float = 2.0
    token_fwd: float = 0.0
    token_bwd: float = 0.0

    @property
    def per_entry(self) -> float:
        return self.attn_entry_fwd + self.attn_entry_bwd

    @property
    def per_token(self) -> float:
        return self.token_fwd + self.token_bwd

    @classmethod
    def attention_only(cls) -> "CPWorkModel":
        """Cornstarch's weighting: attention entries only, no per-token term."""
        return cls(1.0, 2.0, 0.0, 0.0)

    @classmethod
    def from_shape(cls, *, hidden: int, heads: int, kv_heads: int, head_dim: int | None = None, ffn: int,
                   gated: bool = True, cluster: ClusterSpec | None = None, profile=None, kind: str = "llm.decoder",
                   trainable: bool = True, attn_rate: float | None = None) -> "CPWorkModel":
        """Seconds per entry / token of an LLM decoder layer, from the planner's cost model.

        FLOPs come from ``planner.layers.transformer_layer``; rates from ``profile`` (measured on
        the GPU type) or the GPU type's nominal efficiency. ``attn_rate`` overrides the attention
        FLOP rate (masked attention reaches a different rate than GEMMs; ``bench/gpu_cp_attention.py``
        measures it).
        """
        head_dim = head_dim or hidden // heads
        one = transformer_layer("cp", "llm", kind, hidden=hidden, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                                ffn=ffn, seq=1, tokens=1, causal=False, gated=gated)
        linear = one.wgrad_flops
        entry = one.fwd_flops - linear  # 4·heads·head_dim FLOPs per (query, key) pair
        cluster = cluster or ClusterSpec.of(8)

        def rate(what: str) -> float:
            r = profile.rate(kind, what) if profile is not None else None
            return r if r else cluster.gpu.peak_flops * cluster.gpu.efficiency

        a_rate = attn_rate or rate("fwd")
        token_bwd = linear / rate("igrad") + (linear / rate("wgrad") if trainable else 0.0)
        return cls(entry / a_rate, 2 * entry / (attn_rate or rate("igrad")), linear / rate("fwd"), token_bwd)


def default_work_model() -> CPWorkModel:
    """A Llama-3-8B-shaped decoder layer, trained, at the H100's nominal rate (uncalibrated)."""
    return CPWorkModel.from_shape(hidden=4096, heads=32, kv_heads=8, ffn=14336)


# ---- intervals and block weights ---------------------------------------------------------

def flat_intervals(spec_or_lo, hi=None) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a (B, S) mask into one sequence of B·S tokens (rows never see each other).

    Accepts a ``MaskSpec`` or ``lo``/``hi`` arrays of shape (S,) or (B, S). Treating the batch
    as one packed row lets every policy balance across rows and samples at once, and the
    runtime shards the same flattened sequence.
    """
    lo = spec_or_lo.lo if hi is None else spec_or_lo
    hi = spec_or_lo.hi if hi is None else hi
    lo = np.asarray(lo.cpu() if hasattr(lo, "cpu") else lo, dtype=np.int64)
    hi = np.asarray(hi.cpu() if hasattr(hi, "cpu") else hi, dtype=np.int64)
    if lo.shape != hi.shape or lo.ndim not in (1, 2):
        raise ValueError(f"lo and hi must both be (S,) or (B, S); got {lo.shape} and {hi.shape}")
    if lo.ndim == 2:
        offsets = (np.arange(lo.shape[0], dtype=np.int64) * lo.shape[1])[:, None]
        lo, hi = (lo + offsets).reshape(-1), (hi + offsets).reshape(-1)
    if lo.size and (np.any(lo > hi) or lo.min() < 0 or hi.max() >= lo.size):
        raise ValueError("every query needs a non-empty key interval inside the sequence (lo <= hi)")
    return lo, hi


def effective_block_size(seq_len: int, cp: int, block_size: int) -> int:
    """Shrink the block so that a short sequence still has at least one block per rank.

    ``seq_len // cp`` tokens per block gives ≥ cp blocks; only a sequence shorter than the
    group (fewer tokens than ranks) leaves some rank empty, which the runtime tolerates.
    """
    if block_size < 1 or cp < 1:
        raise ValueError(f"block_size and cp must be >= 1, got {block_size} and {cp}")
    return max(1, min(block_size, seq_len // cp))


def block_starts(seq_len: int, block_size: int) -> np.ndarray:
    return np.arange(0, seq_len, block_size, dtype=np.int64)


def block_entries(lo: np.ndarray, hi: np.ndarray, block_size: int) -> np.ndarray:
    """Allowed (query, key) entries per query block (padding queries count their one entry)."""
    return np.add.reduceat(hi - lo + 1, block_starts(lo.size, block_size)).astype(np.float64)


def block_tokens(seq_len: int, block_size: int) -> np.ndarray:
    starts = block_starts(seq_len, block_size)
    return (np.minimum(starts + block_size, seq_len) - starts).astype(np.float64)


def block_weights(lo: np.ndarray, hi: np.ndarray, block_size: int, model: CPWorkModel) -> np.ndarray:
    """Fwd+bwd cost of each query block: attention under the mask plus the per-token part."""
    return block_entries(lo, hi, block_size) * model.per_entry + block_tokens(lo.size, block_size) * model.per_token


# ---- the assignment ----------------------------------------------------------------------

@dataclass(frozen=True)
class CPAssignment:
    """Blocks (sorted ids) per CP rank over a sequence of ``seq_len`` tokens."""

    seq_len: int
    block_size: int
    blocks: tuple[tuple[int, ...], ...]
    policy: str = ""

    def __post_init__(self) -> None:
        n = len(block_starts(self.seq_len, self.block_size))
        seen = sorted(b for r in self.blocks for b in r)
        if seen != list(range(n)):
            missing = sorted(set(range(n)) - set(seen))
            dup = sorted({b for b in seen if seen.count(b) > 1})
            raise ValueError(f"assignment must hold each of {n} blocks exactly once; missing {missing[:5]}, "
                             f"duplicated {dup[:5]}")

    @property
    def cp(self) -> int:
        return len(self.blocks)

    def token_indices(self, rank: int) -> np.ndarray:
        """Sorted global positions held by ``rank`` (sorted, so local order follows the sequence)."""
        if not 0 <= rank < self.cp:
            raise ValueError(f"rank {rank} outside the CP group of {self.cp}")
        parts = [np.arange(b * self.block_size, min((b + 1) * self.block_size, self.seq_len))
                 for b in self.blocks[rank]]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def token_counts(self) -> list[int]:
        return [int(self.token_indices(r).size) for r in range(self.cp)]

    def owner(self) -> np.ndarray:
        """(seq_len,) rank that holds each token."""
        out = np.empty(self.seq_len, dtype=np.int64)
        for r in range(self.cp):
            out[self.token_indices(r)] = r
        return out

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "block_size": self.block_size, "policy": self.policy,
                "blocks": [list(r) for r in self.blocks]}

    @staticmethod
    def from_dict(d: dict) -> "CPAssignment":
        return CPAssignment(d["seq_len"], d["block_size"], tuple(tuple(r) for r in d["blocks"]), d.get("policy", ""))


# ---- policies over block weights ---------------------------------------------------------

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


def plan_cp(spec_or_lo, hi=None, *, cp: int, policy: str = "balanced", block_size: int = 128,
            model: CPWorkModel | None = None) -> CPAssignment:
    """Assign the tokens of a mask (a ``MaskSpec`` or ``lo``/``hi``; (B, S) is flattened) to ``cp`` ranks.

    ``model`` weights the blocks for ``makespan`` and ``balanced`` (default
    :func:`default_work_model`, a Llama-3-8B-shaped layer; pass ``CPWorkModel.from_shape`` for
    your LLM and GPU profile). ``makespan_attn`` always weighs attention only, as Cornstarch does.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown CP policy {policy!r}; expected one of {POLICIES}")
    lo, hi = flat_intervals(spec_or_lo, hi)
    if lo.size == 0:
        raise ValueError("cannot split an empty sequence")
    block = effective_block_size(lo.size, cp, block_size)
    if policy == "makespan_attn":
        model = CPWorkModel.attention_only()
    model = model or default_work_model()
    weights = block_weights(lo, hi, block, model)
    ranks = assign_blocks(weights, cp, policy)
    return CPAssignment(lo.size, block, tuple(tuple(sorted(r)) for r in ranks), policy)


# ---- per-rank report ---------------------------------------------------------------------

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


def _needed_keys(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray, seq_len: int) -> np.ndarray:
    """Bool (seq_len,) of the keys any query in ``idx`` may attend (union of intervals)."""
    diff = np.bincount(lo[idx], minlength=seq_len + 1) - np.bincount(hi[idx] + 1, minlength=seq_len + 1)
    return np.cumsum(diff[:seq_len]) > 0


def rank_work(assignment: CPAssignment, spec_or_lo, hi=None, *, model: CPWorkModel | None = None,
              kv_bytes_per_token: float = 2 * 8 * 128 * DTYPE_BYTES, kv_block: int | None = None,
              traffic: bool = True) -> RankWork:
    """Per-rank work, K/V traffic and K/V memory of ``assignment`` under a mask.

    ``kv_bytes_per_token``: K and V of one token over all KV heads (default: 8 heads × 128
    dims, bf16). ``kv_block``: granularity of the sparse variant (default the assignment's
    block size: whole key blocks are sent). ``traffic=False`` skips the O(cp·S) traffic part
    (its lists are then empty).
    """
    lo, hi = flat_intervals(spec_or_lo, hi)
    n = lo.size
    if n != assignment.seq_len:
        raise ValueError(f"assignment covers {assignment.seq_len} tokens, the mask has {n}")
    model = model or default_work_model()
    kv_block = kv_block or assignment.block_size
    b_entries = block_entries(lo, hi, assignment.block_size)
    b_tokens = block_tokens(n, assignment.block_size)
    tokens = [int(b_tokens[list(r)].sum()) for r in assignment.blocks]
    entries = [float(b_entries[list(r)].sum()) for r in assignment.blocks]
    compute = [e * model.per_entry + t * model.per_token for e, t in zip(entries, tokens)]
    needed, ag, sp, pk_ag, pk_sp = [], [], [], [], []
    if traffic:
        nb = -(-n // kv_block)
        pad = nb * kv_block - n
        for r in range(assignment.cp):
            idx = assignment.token_indices(r)
            need = _needed_keys(lo, hi, idx, n)
            own = np.zeros(n, dtype=bool)
            own[idx] = True
            # the sparse variant sends every key block holding a needed key it does not own
            need_b = np.pad(need & ~own, (0, pad)).reshape(nb, kv_block).any(1)
            recv = int((np.pad(~own, (0, pad)).reshape(nb, kv_block) & need_b[:, None]).sum())
            needed.append(int(need.sum()))
            ag.append((n - idx.size) * kv_bytes_per_token)
            sp.append(recv * kv_bytes_per_token)
            pk_ag.append(n * kv_bytes_per_token)
            pk_sp.append((idx.size + recv) * kv_bytes_per_token)
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
