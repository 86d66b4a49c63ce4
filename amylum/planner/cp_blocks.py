"""Blocks of a flattened sequence and which CP rank holds each: intervals, block weights, ``CPAssignment``.

The (B, S) mask is flattened into one sequence of B·S tokens and cut into blocks of
``block_size`` tokens (the last may be shorter). A rank holds any set of blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cp_work import CPWorkModel


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


def block_tiles(lo: np.ndarray, hi: np.ndarray, block_size: int, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """(partial, full) key tiles of ``tile`` keys that each query block visits, against the whole sequence.

    The same classification as the runtime's block mask (``parallel.cp_attention.rect_tile_tables``):
    a key tile is visited when it meets the union of the block's key intervals, and full when
    every query of the block sees all of it. Exact per query tile when ``block_size == tile``
    (the default: a rank's queries are whole blocks, so its kernel tiles are its blocks).
    """
    starts = block_starts(lo.size, block_size)
    lo_min, lo_max = np.minimum.reduceat(lo, starts), np.maximum.reduceat(lo, starts)
    hi_min, hi_max = np.minimum.reduceat(hi, starts), np.maximum.reduceat(hi, starts)
    visited = hi_max // tile - lo_min // tile + 1
    # full tiles: [k, k + tile) inside [lo_max, hi_min]; the sequence's last tile may be short
    n = lo.size
    first = -(-lo_max // tile)
    last_end = np.where(hi_min == n - 1, -(-n // tile), (hi_min + 1) // tile)
    full = np.maximum(0, last_end - first)
    return (visited - full).astype(np.float64), full.astype(np.float64)


def key_tile_visits(lo: np.ndarray, hi: np.ndarray, block_size: int, blocks, tile: int) -> float:
    """The most query blocks of ``blocks`` that visit any one key tile (the block mask's count)."""
    starts = block_starts(lo.size, block_size)
    first = np.minimum.reduceat(lo, starts)[list(blocks)] // tile
    last = np.maximum.reduceat(hi, starts)[list(blocks)] // tile
    if first.size == 0:
        return 0.0
    count = np.zeros(-(-lo.size // tile) + 1)
    np.add.at(count, first, 1)
    np.add.at(count, last + 1, -1)
    return float(np.cumsum(count).max())


def block_weights(lo: np.ndarray, hi: np.ndarray, block_size: int, model: CPWorkModel) -> np.ndarray:
    """Fwd+bwd cost of each query block: attention under the mask plus the per-token part.

    Attention is costed per allowed entry, or, with a GPU kernel fit (``model.tiled``), per
    kernel tile visited. A rank's fixed cost per call (``model.call_overhead``) is not per
    block: ``cp_traffic.rank_work`` adds it.
    """
    tokens = block_tokens(lo.size, block_size) * model.per_token
    if model.tiled:
        partial, full = block_tiles(lo, hi, block_size, model.tile)
        query_tiles = np.ceil(block_tokens(lo.size, block_size) / model.tile)
        return (partial * model.attn_partial_tile + full * model.attn_full_tile
                + query_tiles * model.attn_query_tile + tokens)
    return block_entries(lo, hi, block_size) * model.per_entry + tokens


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
