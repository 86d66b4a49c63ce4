"""Two parts of the VLM step (bench/gpu_step.py) measured alone, with the options that might speed them up.

    python bench/step_parts.py

1. The fused loss's per-chunk kernel (log-sum-exp, loss and logit gradient over 4,096 target
   rows × 151,936 logits in bf16): the earlier logsumexp + softmax form and amylum's shared
   max/sum form (``amylum.models.loss._chunk_loss_and_grad``) compiled by inductor, and
   hand-written Triton kernels (the one amylum uses on CUDA is ``models/loss_triton.py``) at
   several block sizes. Two reads of the logits and one write of their gradient are the least
   (3.7 GB); the table prints the bandwidth against that. ``--loss-only`` skips part 2.
2. cuBLAS's memsets: the step's profile shows ~430 ``cudaMemsetAsync`` per step from inside
   ``aten::mm``. For the step's projection shapes, how many memsets and how long per matmul
   with torch's default BLAS route and with cuBLASLt (``torch.backends.cuda.preferred_blas_library``).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amylum.models.loss import _chunk_loss_and_grad  # noqa: E402


def cuda_ms(fn, reps=20, warm=3, calls=1):
    """Median over ``reps`` of the mean CUDA-event time of ``calls`` back-to-back calls."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times)


def memsets_per_call(fn, calls: int = 10) -> float:
    """cudaMemsetAsync calls per call of ``fn`` (cuBLAS issues them from inside a matmul)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.name.startswith("Memset")) / calls


def _previous_chunk_loss_and_grad(logits, targets, denominator, scale, softcap, need_grad):
    """Session 6's form: logsumexp and softmax as two separate reductions (for the A/B)."""
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    loss = (lse - z.gather(1, targets[:, None]).squeeze(1)).sum()
    g = torch.softmax(z, dim=-1)
    vocab = torch.arange(z.shape[1], device=z.device)
    g = torch.where(vocab[None, :] == targets[:, None], g - 1.0, g)
    return loss, (g / denominator).to(logits.dtype)


def _triton_chunk_loss_and_grad(block: int, warps: int):
    """amylum's Triton kernel (models/loss_triton.py) at another block size and warp count."""
    from amylum.models.loss_triton import triton_chunk_loss_and_grad

    def run(logits, targets, denominator, scale, softcap, need_grad):
        return triton_chunk_loss_and_grad(logits, targets, denominator, scale, need_grad, block=block, num_warps=warps)

    return run


def loss_kernel() -> None:
    rows, vocab = 4096, 151936
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), device="cuda", generator=g)
    denom = torch.full((), float(rows), device="cuda")
    compiled = {
        "previous: logsumexp + softmax": (_previous_chunk_loss_and_grad, {}),
        "amylum: shared max and sum": (_chunk_loss_and_grad, {}),
        "amylum, coordinate_descent_tuning": (_chunk_loss_and_grad, {"coordinate_descent_tuning": True}),
    }
    variants = {name: None for name in compiled}
    for block, warps in ((2048, 8), (4096, 8), (4096, 16), (8192, 16)):
        variants[f"triton kernel {block} × {warps} warps"] = _triton_chunk_loss_and_grad(block, warps)
    print(f"fused-loss chunk kernel, {rows} × {vocab} bf16 logits (minimum traffic 3 × {rows * vocab * 2 / 1e9:.2f} GB)")
    reference = None
    for name, fn in variants.items():
        if fn is None:
            torch._dynamo.reset()
            body, options = compiled[name]
            fn = torch.compile(body, dynamic=False, options=options or None)
        try:
            out = fn(logits, targets, denom, 1.0, None, True)
            ms = cuda_ms(lambda: fn(logits, targets, denom, 1.0, None, True))
        except Exception as exc:  # a variant that fails is reported, not fatal
            print(f"  {name:<36} failed: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if reference is None:
            reference = out
        diff = max((out[0] - reference[0]).abs().item() / reference[0].abs().item(),
                   (out[1].float() - reference[1].float()).abs().max().item())
        print(f"  {name:<36} {ms:7.3f} ms  {3 * rows * vocab * 2 / ms / 1e9:6.2f} TB/s  max diff vs first {diff:.1e}")


def blas_memsets() -> None:
    t, k = 7076, 1536
    shapes = {"q/k/v merged (fwd)": (t, k, 2048), "MLP gate (fwd)": (t, k, 8960), "down (fwd)": (t, 8960, k),
              "dW k/v merged": (2048, t, k)}
    print("\nmatmuls of the step, per call: kernel ms and memsets, by BLAS route")
    before = torch.backends.cuda.preferred_blas_library()
    for route in ("default", "cublaslt"):
        if route == "cublaslt":
            torch.backends.cuda.preferred_blas_library("cublaslt")
        for name, (m, kk, n) in shapes.items():
            a = torch.randn(m, kk, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(kk, n, device="cuda", dtype=torch.bfloat16)
            ms = cuda_ms(lambda: a @ b)
            memsets = memsets_per_call(lambda: a @ b)
            print(f"  {route:<9} {name:<20} {ms:7.3f} ms  {2 * m * kk * n / ms / 1e9:6.0f} TFLOP/s  {memsets:.0f} memsets/call")
    torch.backends.cuda.preferred_blas_library(before)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    loss_kernel()
    if "--loss-only" not in sys.argv:
        blas_memsets()
