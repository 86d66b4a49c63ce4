"""Fused, chunked LM-head + cross-entropy: the vocabulary logits are never materialised whole.

For Qwen2-1.5B (vocabulary 151,936) a 4 × 1,753-token batch has 2.1 GB of bf16 logits, 4.3 GB
once HF upcasts them for the loss, and the same again for their gradient. Here the LM head
runs on chunks of target positions only (image tokens and prompts have no label, so they
need no logits at all), and the gradients of the hidden states and of the head's weight are
computed chunk by chunk inside the forward pass. The loss is a terminal scalar, so backward
only rescales those stored gradients by the incoming grad: no logits are kept and none are
recomputed.

On a GPU the per-chunk softmax, loss and logit gradient are one kernel (amylum's Triton kernel,
``models/loss_triton.py``; the same arithmetic compiled by inductor where Triton is missing or
the model has a logit softcap): it reads the chunk's bf16 logits twice and writes their bf16
gradient, instead of the half-dozen fp32 passes (upcast, log-sum-exp, softmax, one-hot
subtraction, scaling, downcast) that eager code makes over a (chunk × vocabulary) array. Over
several chunks the head's weight gradient is accumulated in fp32 by the matmul itself
(``out_dtype``) rather than by a bf16 product, an upcast and an add. When all targets fit one chunk, the logit gradient is kept for backward
instead, where one matmul makes the weight gradient already scaled by the incoming gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from amylum.triton_support import triton_available


def _chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor,
                         scale: float, softcap: float | None, need_grad: bool):
    """Σ CE of one chunk (fp32) and, with ``need_grad``, d(Σ CE / denominator)/d(logits) in the logits' dtype.

    d(lse - z_t)/dz = softmax(z) - onehot(t), chained through the softcap and the scale. The
    division (not a product with 1/denominator, as the unfused path divides) keeps the gradients
    rounding-identical to it; a reciprocal's own rounding scales every gradient alike.
    """
    z = logits.float()
    if scale != 1.0:
        z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    # One row maximum and one sum of exponentials serve both the loss (lse = m + log s) and the
    # softmax (e / s): compiled, the row is read once for (m, s) and once more to write the gradient.
    # Separate logsumexp and softmax calls were two reductions, one more read of the logits
    # (2.12 ms against 1.58 ms compiled for 4,096 × 151,936 bf16 logits on an H100, bench/step_parts.py).
    m = z.amax(dim=-1, keepdim=True)
    e = torch.exp(z - m)
    s = e.sum(dim=-1, keepdim=True)
    lse = (m + torch.log(s)).squeeze(1)
    loss = (lse - z.gather(1, targets[:, None]).squeeze(1)).sum()
    if not need_grad:
        return loss, None
    # e / s, not exp(z - lse): normalising by the sum keeps each row's rounding relative to its
    # entries, where exp(z - lse) scales a whole row by the rounding error of lse (large logits).
    g = e / s
    vocab = torch.arange(z.shape[1], device=z.device)
    g = torch.where(vocab[None, :] == targets[:, None], g - 1.0, g)
    if softcap is not None:
        g = g * (1.0 - (z / softcap) ** 2)
    return loss, (g * scale / denominator).to(logits.dtype)


# Compiled code keyed by shapes only (dynamo's own cache); the eager function runs on CPU,
# where compiling would need a C++ toolchain and buys nothing for tests.
_chunk_loss_and_grad_compiled = torch.compile(_chunk_loss_and_grad, dynamic=None)


def _triton_chunk(logits, targets, denominator, scale, softcap, need_grad):
    from amylum.models.loss_triton import triton_chunk_loss_and_grad

    return triton_chunk_loss_and_grad(logits, targets, denominator, scale, need_grad)


def _chunk_function(device: torch.device, softcap: float | None):
    """The per-chunk kernel for ``device``: amylum's Triton kernel on CUDA (its two passes over
    the logits are the minimum; ``models/loss_triton.py``), the compiled function where Triton is
    missing or a softcap is set, the eager one on CPU."""
    if device.type != "cuda":
        return _chunk_loss_and_grad
    if softcap is None and triton_available():
        return _triton_chunk
    return _chunk_loss_and_grad_compiled


def _accumulate_weight_grad(acc: torch.Tensor | None, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """acc + gᵀ h in fp32. On CUDA the matmul writes (or adds into) fp32 directly."""
    if g.is_cuda and g.dtype != torch.float32:
        if acc is None:
            return torch.mm(g.t(), h, out_dtype=torch.float32)
        return torch.addmm(acc, g.t(), h, out_dtype=torch.float32)
    part = (g.t() @ h).float()
    return part if acc is None else acc.add_(part)


def _forward_chunks(hidden, weight, bias, targets, denominator, chunk_size, scale, softcap, compute):
    """Σ CE over all chunks and the (hidden, weight, bias) gradients of Σ CE / denominator."""
    need_h, need_w = hidden.requires_grad, weight.requires_grad
    need_b = bias is not None and bias.requires_grad
    need_grad = need_h or need_w or need_b
    chunk_fn = _chunk_function(hidden.device, softcap)
    w = weight.to(compute)
    b = bias.to(compute) if bias is not None else None
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = grad_b = None
    deferred = (None, None)  # (logit gradient, hidden rows) of a weight gradient left to backward
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_size):
        h = hidden[start : start + chunk_size].to(compute)
        logits = h @ w.t()
        if b is not None:
            logits = logits + b
        loss, g = chunk_fn(logits, targets[start : start + chunk_size], denominator, scale, softcap, need_grad)
        total += loss
        if not need_grad:
            continue
        if need_h:
            rows = grad_h[start : start + chunk_size]
            if rows.dtype == g.dtype:
                torch.mm(g, w, out=rows)
            else:  # fp32 hidden states under autocast: the product is cast on the copy
                rows.copy_(g @ w)
        if need_w and start == 0 and hidden.shape[0] <= chunk_size:
            # One chunk: the weight gradient gᵀh is left to backward, which folds the incoming
            # scalar into h (a [tokens × hidden] product) instead of scaling the finished
            # [vocabulary × hidden] gradient (0.55 ms per step for Qwen2-1.5B on an H100), and its
            # matmul rounds once to the weight's dtype, with no fp32 accumulator written and read.
            deferred = (g, h)
        elif need_w:
            grad_w = _accumulate_weight_grad(grad_w, g, h)
        if need_b:
            part = g.sum(0, dtype=torch.float32)
            grad_b = part if grad_b is None else grad_b.add_(part)
    # Stored in the parameters' dtypes: backward only multiplies by the incoming scalar
    # (1 for a plain loss), so the fp32 accumulators need not outlive the forward.
    grads = (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
             grad_b.to(bias.dtype) if grad_b is not None else None, *deferred)
    return grads, total


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, denominator, chunk_size, scale, softcap):
        # Autocast does not cast inside an autograd.Function the way it casts module calls, and an
        # ``out=`` tensor would refuse its product: the matmul dtype is chosen here, as autocast
        # would (its dtype when enabled, else the weight's), and autocast is off for the body.
        device_type = hidden.device.type
        autocast = torch.is_autocast_enabled(device_type)
        compute = torch.get_autocast_dtype(device_type) if autocast else weight.dtype
        with torch.autocast(device_type, enabled=False):
            grads, total = _forward_chunks(hidden, weight, bias, targets, denominator, chunk_size, scale, softcap,
                                           compute)
        ctx.save_for_backward(*grads)
        ctx.weight_dtype = weight.dtype
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):
        grad_h, grad_w, grad_b, logit_grad, rows = ctx.saved_tensors
        dh = grad_h * grad_output.to(grad_h.dtype) if grad_h is not None else None
        if logit_grad is not None:  # one chunk: d(grad_output · loss)/dW = gᵀ (grad_output · h)
            dw = (logit_grad.t() @ (rows * grad_output.to(rows.dtype))).to(ctx.weight_dtype)
        else:
            dw = grad_w * grad_output.to(grad_w.dtype) if grad_w is not None else None
        db = grad_b * grad_output.to(grad_b.dtype) if grad_b is not None else None
        return dh, dw, db, None, None, None, None, None


def _on_device(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 scalar on ``device``. A host number is written by a fill kernel that carries it
    as an argument: ``torch.tensor(x, device=...)`` would be a synchronous copy (the host waits for
    the GPU), and a copy from pinned memory would read host memory again at every replay of a
    CUDA graph (runtime/graph_step.py), after that buffer has been freed and reused."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32)
    return torch.full((), float(value), dtype=torch.float32, device=device)


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    *,
    denominator: float | torch.Tensor,
    chunk_size: int = 2048,
    scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """``sum_i CE(head(hidden_i), targets_i) / denominator`` without materialising all logits.

    ``hidden``: (N, H) states at target positions only; ``targets``: (N,) token ids.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"hidden must be (N, H) and targets (N,); got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    denominator = _on_device(denominator, hidden.device).clamp_min(1.0)
    if hidden.shape[0] == 0:
        # No target in this microbatch: a zero that still connects to the graph.
        return hidden.sum() * 0.0 + head.weight.sum() * 0.0
    return _FusedLinearCrossEntropy.apply(
        hidden, head.weight, head.bias, targets, denominator, chunk_size, float(scale), softcap
    )
