"""CP attention with the K/V exchange overlapped: own keys while the others' are in flight.

Softmax attention over a key set split in two parts is exact when each part returns its output
``o`` and log-sum-exp ``lse`` (of the scaled, masked scores): with ``m = max(lse₁, lse₂)``,

    out = (e^(lse₁-m)·o₁ + e^(lse₂-m)·o₂) / (e^(lse₁-m) + e^(lse₂-m))

A query with no allowed key in a part has ``lse = -inf`` there (weight 0, output 0); one with
none in either part gets 0 (cannot happen under CP: a query always sees itself, the empty
shard's placeholder its key 0). ``m`` is detached: ``out`` does not depend on it, so its
gradient is 0 analytically, and detaching keeps ``-inf`` rows out of the backward.

One layer call (:func:`overlapped_attention`):

1. post the exchange (``exchange.start``: async all-gather or point-to-point);
2. attend the rank's queries to its own keys (they are in hand);
3. wait, attend to the received keys, merge by LSE.

Backward: autograd runs through the merge and both parts; the received keys' dK/dV return by
the exchange's backward (reduce-scatter / reverse point-to-point), which is *started* by the
wait node's backward (it runs before the own part's backward: autograd runs the ready node
created last first) and awaited in the start node's, so it overlaps the own part's backward.

Both parts' masks are the queries' key intervals cut at the own/received boundary: a query's
allowed keys are one interval of global positions, and its own (received) keys in it are one
interval of the own (received) keys in global order, found by prefix counts.
"""

from __future__ import annotations

import torch

from amylum.attention.backends import run_flex


def split_intervals(is_own: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Cut key intervals ``[lo, hi]`` (indices into keys whose ownership is ``is_own``) in two.

    Returns ``((own_lo, own_hi), (other_lo, other_hi))``: the intervals as indices among the
    own keys and among the others, each in their global order. Empty parts have ``hi < lo``.
    """
    own_before = torch.nn.functional.pad(torch.cumsum(is_own.long(), 0), (1, 0))  # own keys before index i
    other_before = torch.arange(is_own.numel() + 1, device=is_own.device) - own_before
    return ((own_before[lo], own_before[hi + 1] - 1), (other_before[lo], other_before[hi + 1] - 1))


def interval_mask(lo: torch.Tensor, hi: torch.Tensor, kv_len: int) -> torch.Tensor:
    """(1, 1, n, kv_len) boolean mask: query i may see keys ``lo[i]..hi[i]``."""
    keys = torch.arange(kv_len, device=lo.device)
    return ((keys >= lo[:, None]) & (keys <= hi[:, None]))[None, None]


def reference_attention_lse(query, key, value, mask, scaling):
    """Dense masked softmax attention with its LSE: ((B, H, n, D), (B, H, n)); GQA by repeat.

    Differentiable in both outputs; rows with no allowed key give output 0 and LSE ``-inf``
    (their gradients are 0, not NaN). Also runs with no keys at all.
    """
    group = query.shape[1] // key.shape[1]
    if group > 1:  # = transformers' repeat_kv: each K/V head serves ``group`` consecutive query heads
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (query @ key.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    safe = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)  # -inf rows: all probabilities 0
    return torch.exp(scores - safe[..., None]) @ value, lse


def merge_partials(out_a, lse_a, out_b, lse_b):
    """Exact softmax attention over two disjoint key sets from each one's (output, LSE)."""
    m = torch.maximum(lse_a, lse_b).detach()
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # both -inf: weights 0 (no NaN)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)
    denom = w_a + w_b
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)
    acc = torch.promote_types(out_a.dtype, torch.float32)  # bf16 parts are summed in fp32
    out = (w_a[..., None] * out_a.to(acc) + w_b[..., None] * out_b.to(acc)) / denom[..., None]
    return out.to(out_a.dtype)


class PartMask:
    """One part's mask for this rank's queries: dense (reference) or a FlexAttention ``BlockMask``."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, kv_len: int, backend: str, block_size: int) -> None:
        from .cp_attention import rect_block_mask

        self.kv_len = kv_len
        # a part with no keys runs the dense path (n × 0 scores): it keeps the part in the graph,
        # which the exchange's backward (a collective) relies on
        self.flex = backend == "flex" and kv_len > 0
        self.mask = rect_block_mask(lo, hi, kv_len, block_size) if self.flex else interval_mask(lo, hi, kv_len)

    def attend(self, query, key, value, scaling):
        if self.flex:
            return run_flex(query, key, value, self.mask, scaling=scaling, return_lse=True)
        return reference_attention_lse(query, key, value, self.mask, scaling)


class OverlapMasks:
    """The own and the received part's masks of one rank's queries (once per microbatch)."""

    def __init__(self, exchange, backend: str, block_size: int) -> None:
        (own_lo, own_hi), (rem_lo, rem_hi) = split_intervals(exchange.is_own, exchange.lo, exchange.hi)
        n_own = int(exchange.is_own.sum())
        self.own = PartMask(own_lo, own_hi, n_own, backend, block_size)
        self.remote = PartMask(rem_lo, rem_hi, exchange.kv_len - n_own, backend, block_size)


def overlapped_attention(exchange, masks: OverlapMasks, query, kv, head_dim: int, scaling):
    """(1, H, n, D) attention of ``query`` to every allowed key, the exchange of ``kv`` overlapped."""
    own, pending, buffers = exchange.start(kv)
    out_own, lse_own = masks.own.attend(query, own[..., :head_dim], own[..., head_dim:], scaling)
    received = exchange.wait(pending, buffers)
    if not received:  # the sparse exchange brought nothing: own keys are all this rank's queries see
        return out_own
    remote = exchange.remote(received)
    out_rem, lse_rem = masks.remote.attend(query, remote[..., :head_dim], remote[..., head_dim:], scaling)
    return merge_partials(out_own, lse_own, out_rem, lse_rem)
