"""The decomposed route: multimodal attention from the fastest causal kernel there is.

The multimodal mask of a query ``q`` is the key interval ``[a, hi(q)]`` (see
:mod:`amylum.attention.mask`). Split it into two disjoint parts:

* ``[a, q]``: plain causal attention inside the packed sample ("document-causal"), run as one
  varlen causal flash call over every row and sample (padding runs are their own documents,
  so nothing is empty; their outputs are ignored);
* ``[q + 1, e - 1]`` for a query of a segment ``[s, e)``: the segment's "future" keys. For
  queries ``s .. e-2`` against keys ``s+1 .. e-1`` this is an upper triangle *with* its
  diagonal, which, after reversing both the query and the key order, is exactly a causal
  square. So every segment's remainder is one more causal flash problem, and all segments of
  the batch go into one varlen call.

The two partial results are merged exactly with their log-sum-exps
(``L = logaddexp(lse_a, lse_b)``, ``O = e^(lse_a-L)·O_a + e^(lse_b-L)·O_b``), and the backward
runs each part's flash backward with the merged ``O`` and ``L`` (see
:mod:`amylum.attention.flash_ops`). Work done = allowed entries only (plus the diagonal tiles'
usual causal waste); memory = flash's + O(S) indices and segment gathers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .flash_ops import causal_varlen_bwd, causal_varlen_fwd, flash_usable
from .mask import MaskSpec, _run_starts


@dataclass(frozen=True)
class DecomposedMask:
    """Per-batch index tensors for :func:`decomposed_attention` (O(S) memory, built once per forward)."""

    batch: int
    seq_len: int
    doc_cu: torch.Tensor  # (n_docs + 1,) int32 over the flattened B·S tokens
    doc_max: int
    seg_q_idx: torch.Tensor  # (T,) int64: flattened query index of each reversed segment query
    seg_cu: torch.Tensor  # (n_segments + 1,) int32
    seg_max: int

    @property
    def num_segment_queries(self) -> int:
        return self.seg_q_idx.numel()

    def to(self, device) -> "DecomposedMask":
        return DecomposedMask(
            self.batch, self.seq_len, self.doc_cu.to(device), self.doc_max, self.seg_q_idx.to(device),
            self.seg_cu.to(device), self.seg_max,
        )


def _cu(lengths: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


def decomposed_mask(spec: MaskSpec) -> DecomposedMask:
    """Document and segment runs of a (validated) :class:`MaskSpec`."""
    B, S = spec.shape
    device = spec.sample_ids.device
    # Documents: runs of equal sample id in each row (a padding run is a document too).
    doc_starts = _run_starts(spec.sample_ids).reshape(-1).nonzero().squeeze(1)
    doc_cu = torch.cat([doc_starts, torch.tensor([B * S], device=device)]).to(torch.int32)
    doc_max = int((doc_cu[1:] - doc_cu[:-1]).max())

    seg = spec.segment_ids
    starts = (_run_starts(seg) & (seg >= 0)).reshape(-1).nonzero().squeeze(1)
    last = torch.ones_like(seg, dtype=torch.bool)
    last[:, :-1] = seg[:, :-1] != seg[:, 1:]
    ends = (last & (seg >= 0)).reshape(-1).nonzero().squeeze(1) + 1  # exclusive
    m = ends - starts - 1  # queries s .. e-2 have future keys
    keep = m > 0
    ends, m = ends[keep], m[keep]
    seg_cu = _cu(m)
    total = int(seg_cu[-1]) if m.numel() else 0
    if total:
        which = torch.repeat_interleave(torch.arange(m.numel(), device=device), m, output_size=total)
        offset = torch.arange(total, device=device) - seg_cu[:-1].long()[which]
        seg_q_idx = ends[which] - 2 - offset  # reversed: first the last query with a future key
        seg_max = int(m.max())
    else:
        seg_q_idx = torch.zeros(0, dtype=torch.long, device=device)
        seg_max = 0
    return DecomposedMask(B, S, doc_cu, doc_max, seg_q_idx, seg_cu, seg_max)


class _DecomposedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask: DecomposedMask, scale: float, use_flash: bool):
        out, lse, aux_doc = causal_varlen_fwd(q, k, v, mask.doc_cu, mask.doc_max, scale, use_flash=use_flash)
        aux_seg = None
        if mask.num_segment_queries:
            qi = mask.seg_q_idx
            out_b, lse_b, aux_seg = causal_varlen_fwd(
                q[qi], k[qi + 1], v[qi + 1], mask.seg_cu, mask.seg_max, scale, use_flash=use_flash
            )
            lse_a = lse[:, qi]
            merged_lse = torch.logaddexp(lse_a, lse_b)
            w_a = torch.exp(lse_a - merged_lse).t().unsqueeze(-1)
            w_b = torch.exp(lse_b - merged_lse).t().unsqueeze(-1)
            out = out.clone()  # the kernel's own output may be referenced by its aux state
            acc = torch.promote_types(out.dtype, torch.float32)
            out[qi] = (w_a * out[qi].to(acc) + w_b * out_b.to(acc)).to(out.dtype)
            lse = lse.clone()
            lse[:, qi] = merged_lse
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mask, ctx.scale, ctx.use_flash, ctx.aux = mask, scale, use_flash, (aux_doc, aux_seg)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        mask, scale, use_flash = ctx.mask, ctx.scale, ctx.use_flash
        aux_doc, aux_seg = ctx.aux
        dout = dout.contiguous()
        dq, dk, dv = causal_varlen_bwd(
            dout, q, k, v, out, lse, mask.doc_cu, mask.doc_max, scale, aux_doc, use_flash=use_flash
        )
        if mask.num_segment_queries:
            qi = mask.seg_q_idx
            ki = qi + 1
            dq_b, dk_b, dv_b = causal_varlen_bwd(
                dout[qi], q[qi], k[ki], v[ki], out[qi], lse[:, qi].contiguous(), mask.seg_cu, mask.seg_max,
                scale, aux_seg, use_flash=use_flash,
            )
            # Indices are unique within each index set, so plain indexed writes are race-free.
            acc = torch.promote_types(dq.dtype, torch.float32)
            dq[qi] = (dq[qi].to(acc) + dq_b.to(acc)).to(dq.dtype)
            dk[ki] = (dk[ki].to(acc) + dk_b.to(acc)).to(dk.dtype)
            dv[ki] = (dv[ki].to(acc) + dv_b.to(acc)).to(dv.dtype)
        return dq, dk, dv, None, None, None


def decomposed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DecomposedMask, scale: float, kernel: str = "auto"
) -> torch.Tensor:
    """Multimodal attention over packed (B·S, H, D) tensors (``k``/``v`` may have fewer heads).

    ``kernel``: ``"flash"`` (CUDA fp16/bf16), ``"math"`` (anywhere; slow, for tests) or
    ``"auto"`` (flash when usable).
    """
    if q.shape[0] != mask.batch * mask.seq_len:
        raise ValueError(f"q has {q.shape[0]} tokens but the mask is for {mask.batch}×{mask.seq_len}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key/value heads")
    if kernel not in ("auto", "flash", "math"):
        raise ValueError(f"unknown kernel {kernel!r}; expected 'auto', 'flash' or 'math'")
    use_flash = flash_usable(q) if kernel == "auto" else kernel == "flash"
    if use_flash and not flash_usable(q):
        raise ValueError("flash kernel needs CUDA fp16/bf16 tensors with head_dim % 8 == 0 and <= 256")
    return _DecomposedAttention.apply(q.contiguous(), k.contiguous(), v.contiguous(), mask, float(scale), use_flash)
