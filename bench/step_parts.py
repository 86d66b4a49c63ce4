"""Two parts of the VLM step (bench/gpu_step.py) measured alone, with the options that might speed them up.

    python bench/step_parts.py

1. The fused loss's per-chunk kernel (``amylum.models.loss._chunk_loss_and_grad``: log-sum-exp,
   loss and logit gradient over 4,096 target rows × 151,936 logits in bf16), compiled with
   inductor's defaults and with other reduction settings. It moves at least 3.7 GB (two reads
   of the logits, one write of their gradient); the table prints its bandwidth.
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


def cuda_ms(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def loss_kernel() -> None:
    rows, vocab = 4096, 151936
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(rows, vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (rows,), device="cuda", generator=g)
    denom = torch.full((), float(rows), device="cuda")
    variants = {
        "inductor defaults (amylum)": {},
        "split_reductions=False": {"split_reductions": False},
        "coordinate_descent_tuning": {"coordinate_descent_tuning": True},
        "max_autotune_pointwise": {"max_autotune_pointwise": True},
    }
    print(f"fused-loss chunk kernel, {rows} × {vocab} bf16 logits (minimum traffic 3 × {rows * vocab * 2 / 1e9:.2f} GB)")
    reference = None
    for name, options in variants.items():
        torch._dynamo.reset()
        fn = torch.compile(_chunk_loss_and_grad, dynamic=False, options=options or None)
        try:
            out = fn(logits, targets, denom, 1.0, None, True)
            ms = cuda_ms(lambda: fn(logits, targets, denom, 1.0, None, True))
        except Exception as exc:  # a setting inductor refuses is reported, not fatal
            print(f"  {name:<32} failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if reference is None:
            reference = out
        diff = max((out[0] - reference[0]).abs().item() / reference[0].abs().item(),
                   (out[1].float() - reference[1].float()).abs().max().item())
        print(f"  {name:<32} {ms:7.3f} ms  {3 * rows * vocab * 2 / ms / 1e9:6.2f} TB/s  max diff vs first {diff:.1e}")


def blas_memsets() -> None:
    from torch.profiler import ProfilerActivity, profile

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
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    a @ b
                torch.cuda.synchronize()
            memsets = sum(1 for e in prof.events() if e.name.startswith("Memset")) / 10
            print(f"  {route:<9} {name:<20} {ms:7.3f} ms  {2 * m * kk * n / ms / 1e9:6.0f} TFLOP/s  {memsets:.0f} memsets/call")
    torch.backends.cuda.preferred_blas_library(before)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    loss_kernel()
    blas_memsets()
