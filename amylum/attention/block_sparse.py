"""Block-sparse form of a :class:`~amylum.attention.mask.MaskSpec` for FlexAttention.

The (S × S) mask is cut into (block_q × block_k) tiles, each classified as empty (skipped),
full (computed without evaluating the mask) or partial (mask evaluated per element). The
classification uses per-query-block minima / maxima of the key intervals, so it costs
O(S + tiles) time and memory and never materialises the S × S mask. It is exact for "full";
"empty" is conservative (a tile it cannot prove empty is marked partial, which is still
correct, only slower — with contiguous intervals this almost never happens).
"""

from __future__ import annotations

import torch

from .mask import MaskSpec


def tile_classes(spec: MaskSpec, block_q: int = 128, block_k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``(partial, full)``: two (B, n_q_blocks, n_k_blocks) bool tables."""
    B, S = spec.shape
    nq, nk = -(-S // block_q), -(-S // block_k)
    pad = nq * block_q - S
    big = 2 * S + 1

    def blocks(t: torch.Tensor, fill: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, pad), value=fill).view(B, nq, block_q)

    lo_min = blocks(spec.lo, big).amin(-1)
    lo_max = blocks(spec.lo, -1).amax(-1)
    hi_min = blocks(spec.hi, big).amin(-1)
    hi_max = blocks(spec.hi, -1).amax(-1)
    k_start = torch.arange(nk, device=spec.lo.device) * block_k
    k_end = torch.clamp(k_start + block_k, max=S) - 1
    touched = (lo_min[..., None] <= k_end) & (hi_max[..., None] >= k_start)
    full = (lo_max[..., None] <= k_start) & (hi_min[..., None] >= k_end)
    return touched & ~full, full


def _to_indices(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nq, nk) bool → FlexAttention's (B, 1, nq) counts and (B, 1, nq, nk) indices (used first)."""
    counts = table.sum(-1, dtype=torch.int32)
    order = torch.argsort(table.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None].contiguous(), order[:, None].contiguous()


def interval_mask_mod(spec: MaskSpec, padded_len: int):
    """FlexAttention ``mask_mod`` reading the O(S) intervals (padded so block-edge reads stay in bounds)."""
    pad = padded_len - spec.seq_len
    lo = torch.nn.functional.pad(spec.lo, (0, pad), value=1).to(torch.int32)
    hi = torch.nn.functional.pad(spec.hi, (0, pad), value=0).to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= lo[b, q_idx]) & (kv_idx <= hi[b, q_idx])

    return mask_mod


def flex_block_mask(spec: MaskSpec, block_size: int | tuple[int, int] = 128):
    """A FlexAttention ``BlockMask`` for ``spec`` (head dimension broadcast)."""
    from torch.nn.attention.flex_attention import BlockMask

    block_q, block_k = (block_size, block_size) if isinstance(block_size, int) else block_size
    partial, full = tile_classes(spec, block_q, block_k)
    kv_num, kv_idx = _to_indices(partial)
    full_num, full_idx = _to_indices(full)
    S = spec.seq_len
    padded = max(-(-S // block_q) * block_q, -(-S // block_k) * block_k)
    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=(block_q, block_k),
        mask_mod=interval_mask_mod(spec, padded),
        seq_lengths=(S, S),
    )
