"""Variable-length causal attention that also returns its log-sum-exp, plus its backward.

Two implementations of one small contract, over packed (total_tokens, heads, dim) tensors
split into documents by ``cu`` (int32 cumulative lengths):

* ``flash``: PyTorch's bundled FlashAttention-2 varlen kernels (``aten._flash_attention_*``),
  CUDA, fp16/bf16. Grouped-query attention is native (kv head = head // group).
* ``math``: the same computation in plain PyTorch (a loop over documents), for CPU tests and
  dtypes flash does not take.

The backward takes ``out`` and ``lse`` of the *final, merged* attention rather than of this
call: with those, the per-block backward yields exactly this block's share of the gradient
(P = exp(s - lse) is the globally normalised probability and rowsum(dO · O) the global
correction term), which is how split attention (e.g. ring attention) is differentiated.
"""

from __future__ import annotations

import torch


def flash_usable(q: torch.Tensor) -> bool:
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and hasattr(torch.ops.aten, "_flash_attention_forward")
    )


# ---------------------------------------------------------------- lse layout helpers
def _doc_positions(cu: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = (cu[1:] - cu[:-1]).long()
    doc = torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=total)
    offset = torch.arange(total, device=cu.device) - cu[:-1].long()[doc]
    return doc, offset


def _lse_packed(lse: torch.Tensor, cu: torch.Tensor, total: int) -> torch.Tensor:
    """Kernel lse → (H, total). Flash-2 varlen returns (H, total); older builds (docs, H, max_len)."""
    if lse.dim() == 2:
        return lse
    doc, offset = _doc_positions(cu, total)
    return lse[doc, :, offset].t()


def _lse_kernel(lse: torch.Tensor, like: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
    """(H, total) → the layout ``like`` (the forward's kernel lse) has."""
    if like.dim() == 2:
        return lse.contiguous()
    out = torch.zeros_like(like)
    doc, offset = _doc_positions(cu, lse.shape[1])
    out[doc, :, offset] = lse.t()
    return out


# ---------------------------------------------------------------- flash
def _flash_fwd(q, k, v, cu, max_len, scale):
    out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale
    )
    return out, _lse_packed(lse, cu, q.shape[0]), (lse, rng, unused)


def _flash_bwd(dout, q, k, v, out, lse, cu, max_len, scale, aux):
    kernel_lse, rng, unused = aux
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        dout, q, k, v, out, _lse_kernel(lse, kernel_lse, cu), cu, cu, max_len, max_len, 0.0, True, rng, unused,
        scale=scale,
    )
    return dq, dk, dv


# ---------------------------------------------------------------- math (reference quality)
def _expand_kv(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.repeat_interleave(heads // t.shape[1], dim=1) if t.shape[1] != heads else t


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # fp32 accumulation, fp64 stays fp64 (tests)


def _math_fwd(q, k, v, cu, max_len, scale):
    H, acc = q.shape[1], _acc(q)
    out = torch.empty_like(q[..., :1].expand(*q.shape[:2], v.shape[-1])).contiguous()
    lse = torch.empty(H, q.shape[0], dtype=acc, device=q.device)
    kx, vx = _expand_kv(k, H).to(acc), _expand_kv(v, H).to(acc)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b == a:
            continue
        s = torch.einsum("qhd,khd->hqk", q[a:b].to(acc), kx[a:b]) * scale
        causal = torch.ones(b - a, b - a, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~causal, float("-inf"))
        lse[:, a:b] = torch.logsumexp(s, dim=-1)
        out[a:b] = torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), vx[a:b]).to(out.dtype)
    return out, lse, None


def _math_bwd(dout, q, k, v, out, lse, cu, max_len, scale, aux):
    H, Hkv, acc = q.shape[1], k.shape[1], _acc(q)
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dkx = torch.zeros(q.shape[0], H, k.shape[-1], dtype=acc, device=q.device)
    dvx = torch.zeros(q.shape[0], H, v.shape[-1], dtype=acc, device=q.device)
    kx, vx = _expand_kv(k, H).to(acc), _expand_kv(v, H).to(acc)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if b == a:
            continue
        qd, do, od = q[a:b].to(acc), dout[a:b].to(acc), out[a:b].to(acc)
        s = torch.einsum("qhd,khd->hqk", qd, kx[a:b]) * scale
        causal = torch.ones(b - a, b - a, dtype=torch.bool, device=q.device).tril()
        p = torch.exp(s - lse[:, a:b, None]).masked_fill(~causal, 0.0)
        dvx[a:b] = torch.einsum("hqk,qhd->khd", p, do)
        dp = torch.einsum("qhd,khd->hqk", do, vx[a:b])
        delta = (do * od).sum(-1).t()[:, :, None]  # (H, q, 1)
        ds = p * (dp - delta) * scale
        dq[a:b] = torch.einsum("hqk,khd->qhd", ds, kx[a:b])
        dkx[a:b] = torch.einsum("hqk,qhd->khd", ds, qd)
    dk = dkx.view(q.shape[0], Hkv, H // Hkv, -1).sum(2)
    dv = dvx.view(q.shape[0], Hkv, H // Hkv, -1).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def causal_varlen_fwd(q, k, v, cu, max_len: int, scale: float, *, use_flash: bool):
    """→ ``(out, lse (H, total) fp32, aux)`` for causal attention inside each document."""
    return (_flash_fwd if use_flash else _math_fwd)(q, k, v, cu, max_len, scale)


def causal_varlen_bwd(dout, q, k, v, out, lse, cu, max_len: int, scale: float, aux, *, use_flash: bool):
    """→ ``(dq, dk, dv)`` of this block given the final ``out`` / ``lse`` (see module docstring)."""
    return (_flash_bwd if use_flash else _math_bwd)(dout, q, k, v, out, lse, cu, max_len, scale, aux)
