"""The fused loss's per-chunk kernel (loss and logit gradient of a chunk of rows) in Triton.

One program per row: a first pass over the row keeps a running maximum and sum of
exponentials per lane (an "online" softmax), a second pass writes the gradient
``(softmax(z) - onehot(t)) · scale / denominator`` in the logits' dtype. The row is read twice
and its gradient written once, the least a two-pass softmax can move. For 4,096 × 151,936 bf16
logits on an H100 it ran in 1.32 ms (2.8 TB/s), against 1.58 ms for the same arithmetic
compiled by inductor from ``models/loss.py`` and 2.12 ms for the earlier logsumexp + softmax
form (``bench/step_parts.py``, docs/BENCHMARKS.md, issue 5).

Arithmetic as in ``models/loss.py``: fp32 throughout, the softmax normalised by the row's sum
(``exp(z - m) / s``), the scale applied before the division by the denominator. Only the
sums' order differs (per lane, then across lanes), which can move a gradient by one bf16 ulp.
No softcap: a model with one (Gemma-2) keeps the compiled path.
"""

from __future__ import annotations

import functools

import torch

# Columns per program step and warps per program: 4,096 × 16 ran in 1.315 ms, 2,048 × 8 in
# 1.332 and 8,192 × 16 in 1.324 (bench/step_parts.py, H100, session 7): flat near the optimum.
BLOCK = 4096
NUM_WARPS = 16


@functools.cache
def _kernel():
    """Defined on first use (importing this module needs no Triton) and then kept."""
    import triton
    import triton.language as tl

    @triton.jit
    def chunk_loss_kernel(logits, grad, row_loss, targets, denominator, vocab, stride_row, scale,
                          WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        base = logits + row * stride_row
        # Lanes start at a finite minimum: exp(m - m_new) of two -inf lanes would be NaN.
        m = tl.full([BLOCK], -1e30, tl.float32)
        s = tl.zeros([BLOCK], tl.float32)
        for off in range(0, vocab, BLOCK):
            cols = off + tl.arange(0, BLOCK)
            z = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32) * scale
            m_new = tl.maximum(m, z)
            s = s * tl.exp(m - m_new) + tl.exp(z - m_new)
            m = m_new
        row_max = tl.max(m, 0)
        row_sum = tl.sum(s * tl.exp(m - row_max), 0)
        t = tl.load(targets + row)
        z_t = tl.load(base + t).to(tl.float32) * scale
        tl.store(row_loss + row, row_max + tl.log(row_sum) - z_t)
        if WRITE_GRAD:
            d = tl.load(denominator)
            out = grad + row * vocab
            for off in range(0, vocab, BLOCK):
                cols = off + tl.arange(0, BLOCK)
                z = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32) * scale
                p = tl.exp(z - row_max) / row_sum
                g = tl.where(cols == t, p - 1.0, p) * scale / d
                tl.store(out + cols, g.to(grad.dtype.element_ty), mask=cols < vocab)

    return chunk_loss_kernel


def triton_chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor,
                               scale: float, need_grad: bool, *, block: int = BLOCK,
                               num_warps: int = NUM_WARPS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Σ CE of the chunk (fp32 scalar) and, with ``need_grad``, its logit gradient (``logits``' dtype).

    ``logits``: (rows, vocab), unit stride along the vocabulary; ``targets``: (rows,) ids in
    [0, vocab) (the data path's labels; an id outside would read another row's logit).
    ``block`` / ``num_warps``: columns per loop step and warps per row (bench/step_parts.py).
    """
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"logits must be a (rows, vocab) tensor with unit column stride; got {tuple(logits.shape)}, "
                         f"strides {logits.stride()}")
    rows, vocab = logits.shape
    row_loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    grad = torch.empty((rows, vocab), device=logits.device, dtype=logits.dtype) if need_grad else row_loss
    if rows:
        _kernel()[(rows,)](logits, grad, row_loss, targets, denominator, vocab, logits.stride(0), float(scale),
                           WRITE_GRAD=need_grad, BLOCK=block, num_warps=num_warps)
    return row_loss.sum(), (grad if need_grad else None)
