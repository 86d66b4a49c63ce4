"""AdamW step alone over Qwen2-1.5B's trainable tensors (bf16): torch's fused kernel vs amylum's
Triton kernel (amylum/runtime/adamw_triton.py) at several tile sizes.

    python bench/adamw_kernel.py

Each row: ms per step over 10 back-to-back steps (CUDA events), the bandwidth over the bytes
AdamW must move (read param, grad, exp_avg, exp_avg_sq; write param, exp_avg, exp_avg_sq: 14
bytes per bf16 element), and the host time to issue one step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import amylum.runtime.adamw_triton as adamw_triton  # noqa: E402
from step_parts import cuda_ms  # noqa: E402


def qwen2_1p5b_shapes() -> list[tuple[int, ...]]:
    hidden, inter, kv, vocab, layers = 1536, 8960, 256, 151936, 28
    layer = [(hidden, hidden), (hidden,), (kv, hidden), (kv,), (kv, hidden), (kv,), (hidden, hidden),
             (inter, hidden), (inter, hidden), (hidden, inter), (hidden,), (hidden,)]
    return [(vocab, hidden)] + layer * layers + [(hidden,)]


def timed(opt, reps=10) -> tuple[float, float]:
    """(GPU ms per step over ``reps`` back-to-back steps, host ms per step to issue them).

    Back to back, the host runs ahead of the GPU unless issuing a step takes longer than running
    it; then the GPU time includes the wait, which is what a training loop would see."""
    for _ in range(2):  # state, tables, compilation
        opt.step()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    a.record()
    for _ in range(reps):
        opt.step()
    host = (time.perf_counter() - t0) * 1000 / reps
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps, host


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    shapes = qwen2_1p5b_shapes()
    params = [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=torch.bfloat16) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    elements = sum(p.numel() for p in params)
    traffic = 14 * elements
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; {len(params)} tensors, "
          f"{elements / 1e9:.2f} G elements, {traffic / 1e9:.1f} GB per step")
    print(f"  {'optimizer':<34} {'ms/step':>7}  {'TB/s':>5}  host ms/step")
    ms, host = timed(torch.optim.AdamW(params, lr=1e-5, fused=True))
    print(f"  {'torch fused AdamW':<34} {ms:7.2f}  {traffic / ms / 1e9:5.2f}  {host:6.2f}")
    for block, warps in ((4096, 8), (8192, 8), (8192, 16), (16384, 16), (16384, 32), (32768, 32)):
        adamw_triton.BLOCK, adamw_triton.NUM_WARPS = block, warps
        ms, host = timed(adamw_triton.TritonAdamW(params, lr=1e-5))
        print(f"  {f'TritonAdamW BLOCK {block}, {warps} warps':<34} {ms:7.2f}  {traffic / ms / 1e9:5.2f}  {host:6.2f}")
    copy_src = torch.empty(elements, device="cuda", dtype=torch.bfloat16)
    copy_dst = torch.empty_like(copy_src)
    ms = cuda_ms(lambda: copy_dst.copy_(copy_src), reps=5)
    print(f"  {'reference: one bf16 copy':<34} {ms:7.2f}  {4 * elements / ms / 1e9:5.2f}")


if __name__ == "__main__":
    main()
