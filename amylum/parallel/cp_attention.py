"""Attention under context parallelism: local queries against exchanged K/V.

Registered with transformers' ``AttentionInterface`` as ``amylum_cp``, so HF's own attention
modules call it (no copied forward). Each rank holds any subset of the sequence's tokens
(``amylum.planner.cp_balance``); positions stay global, so RoPE is applied correctly before
K/V leave the rank. The per-microbatch state (who holds what, this rank's key intervals, the
mask) is a :class:`CPAttention` object passed to the model as the ``amylum_cp`` kwarg, which
HF forwards to every attention call: nothing lives in a global cache.

How K/V reach a rank is the exchange's job (``cp_exchange``): all-gather of the whole
sequence, or a mask-aware exchange of only the key blocks the rank's queries may see. Either
returns the keys in global order and the queries' key intervals in those keys' coordinates,
so the mask is built the same way for both.

With ``overlap=True`` the exchange runs while the queries attend to the rank's own keys, and
the received keys' part is merged by log-sum-exp (``cp_overlap``); exact, and the received
keys' dK/dV return while the own part's backward runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from amylum.attention.backends import MASK_KWARG, decomposed_attention_fn, flex_attention_fn, reference_attention, run_flex

from .cp_overlap import OverlapMasks, interval_mask, overlapped_attention

CP_KWARG = "amylum_cp"
CP_IMPLEMENTATION = "amylum_cp"
CP_BACKENDS = ("reference", "flex")


def rect_tile_tables(lo: torch.Tensor, hi: torch.Tensor, kv_len: int, block_q: int, block_k: int):
    """(partial, full) (1, n_q_blocks, n_k_blocks) tables for queries with key intervals ``lo``/``hi``.

    The rectangular version of ``amylum.attention.tile_classes``: a rank's queries are a subset
    of the sequence while its keys are all of it.
    """
    n = lo.shape[0]
    nq, nk = -(-n // block_q), -(-kv_len // block_k)
    pad = nq * block_q - n
    big = 2 * kv_len + 1

    def blocks(t, fill):
        return torch.nn.functional.pad(t, (0, pad), value=fill).view(nq, block_q)

    lo_min, lo_max = blocks(lo, big).amin(-1), blocks(lo, -1).amax(-1)
    hi_min, hi_max = blocks(hi, big).amin(-1), blocks(hi, -1).amax(-1)
    k_start = torch.arange(nk, device=lo.device) * block_k
    k_end = torch.clamp(k_start + block_k, max=kv_len) - 1
    touched = (lo_min[:, None] <= k_end) & (hi_max[:, None] >= k_start)
    full = (lo_max[:, None] <= k_start) & (hi_min[:, None] >= k_end)
    return (touched & ~full)[None], full[None]


def rect_block_mask(lo: torch.Tensor, hi: torch.Tensor, kv_len: int, block_size: int = 128):
    """FlexAttention ``BlockMask`` for (len(lo) queries) × (kv_len keys) from per-query intervals."""
    from torch.nn.attention.flex_attention import BlockMask

    from amylum.attention.block_sparse import _to_indices

    partial, full = rect_tile_tables(lo, hi, kv_len, block_size, block_size)
    kv_num, kv_idx = _to_indices(partial)
    full_num, full_idx = _to_indices(full)
    q_pad = -(-lo.shape[0] // block_size) * block_size
    lo_p = torch.nn.functional.pad(lo, (0, q_pad - lo.shape[0]), value=1).to(torch.int32)
    hi_p = torch.nn.functional.pad(hi, (0, q_pad - hi.shape[0]), value=0).to(torch.int32)

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx >= lo_p[q_idx]) & (kv_idx <= hi_p[q_idx])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=(block_size, block_size),
                                    mask_mod=mask_mod, seq_lengths=(lo.shape[0], kv_len))


class CPAttention:
    """Per-microbatch CP attention state for one rank (built by ``context.cp_attention_inputs``).

    ``exchange``: an ``AllGatherKV`` or ``SparseKV`` (``cp_exchange``), which also carries the
    local queries' key intervals (``lo``/``hi``) in the coordinates of the keys it returns.
    ``overlap``: attend to the own keys while the exchange is in flight (``cp_overlap``).
    """

    def __init__(self, exchange, *, backend: str = "reference", block_size: int = 128, num_ranks: int,
                 overlap: bool = False) -> None:
        if backend not in CP_BACKENDS:
            raise ValueError(f"unknown CP attention backend {backend!r}; expected one of {CP_BACKENDS}")
        self.exchange, self.backend, self.overlap = exchange, backend, overlap
        self.n_queries = int(exchange.lo.shape[0])
        size = dist.get_world_size(exchange.group) if dist.is_initialized() else 1
        if num_ranks != size:
            raise ValueError(f"CP shard is for {num_ranks} ranks but the process group has {size}")
        # The mask for this rank's queries, built once per microbatch and shared by all layers.
        lo, hi, kv_len = exchange.lo, exchange.hi, exchange.kv_len
        if overlap:  # one mask per part: own keys, received keys
            self.mask = OverlapMasks(exchange, backend, block_size)
        elif backend == "reference":
            self.mask = interval_mask(lo, hi, kv_len)
        else:
            self.mask = rect_block_mask(lo, hi, kv_len, block_size)

    def __call__(self, module, query, key, value, dropout: float, scaling, kwargs):
        if query.shape[0] != 1:
            raise ValueError(f"CP runs the flattened batch as one row; got batch dimension {query.shape[0]}")
        if query.shape[2] != self.n_queries:
            raise ValueError(f"CP shard holds {self.n_queries} tokens but the layer sees {query.shape[2]}; "
                             "shard inputs_embeds and position_ids with the same CPShard")
        if dropout:
            raise ValueError("amylum's CP attention does not support attention dropout")
        d = key.shape[-1]
        # One exchange for K and V together (the same token set travels).
        kv = torch.cat([key, value], dim=-1)
        if self.overlap:
            out = overlapped_attention(self.exchange, self.mask, query, kv, d, scaling)
            return out.transpose(1, 2).contiguous(), None
        kv = self.exchange(kv)
        k_keys, v_keys = kv[..., :d], kv[..., d:]
        if self.backend == "reference":
            return sdpa_attention_forward(module, query, k_keys, v_keys, self.mask, dropout=0.0, scaling=scaling)
        out = run_flex(query, k_keys, v_keys, self.mask, scaling=scaling)
        return out.transpose(1, 2).contiguous(), None


def cp_attention_fn(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """``AttentionInterface`` entry: CP when the microbatch carries a :class:`CPAttention`.

    Without one (decoding, or a non-CP forward with amylum's own mask) it delegates to the
    matching amylum backend, so a model switched to CP still runs unsharded forwards.
    """
    cp = kwargs.pop(CP_KWARG, None)
    if isinstance(cp, CPAttention):  # also for an empty shard: it must still join the collective
        return cp(module, query, key, value, dropout, scaling, kwargs)
    from torch.nn.attention.flex_attention import BlockMask

    if isinstance(attention_mask, BlockMask):
        return flex_attention_fn(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if MASK_KWARG in kwargs:
        return decomposed_attention_fn(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    return reference_attention(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


def register_cp_attention() -> None:
    """Register ``amylum_cp`` with transformers (idempotent).

    No mask builder is registered on purpose: HF then builds no mask at all for this
    implementation (CP forwards carry their own), and skips its packed-sequence detection on
    the global, non-contiguous ``position_ids`` (a host sync per forward, and an error on an
    empty shard). Forwards with amylum's 4D or block masks still pass them through.
    """
    from transformers import AttentionInterface

    AttentionInterface.register(CP_IMPLEMENTATION, cp_attention_fn)
