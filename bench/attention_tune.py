#!/usr/bin/env python
"""FlexAttention kernel options for amylum's BlockMask (issue 4), against flash causal in the same run.

    python bench/attention_tune.py                 # 16k and 32k rows of bench/attention.py, one H100: ~5 min
    python bench/attention_tune.py --seqs 16384    # one length

The rows (one sample with images in text, a packed row, a GQA case) and the "useful TFLOP/s"
convention are bench/attention.py's; each variant runs amylum's own BlockMask through
FlexAttention with default or tuned ``kernel_options`` (tile sizes, warps, stages; the
``fwd_``/``bwd_`` prefixes address one direction), compiled for static or for dynamic shapes
(a dynamic-shape kernel is what a process gets once it has seen a second sequence length). A variant that fails to compile
prints its error and the run goes on. The best variant per row is printed at the end; the
library's default options change only if a variant wins on every row.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attention as base  # noqa: E402  (bench/attention.py)

from amylum.attention import attention_inputs  # noqa: E402

TUNED = {  # what max-autotune picked on an H100 for the 16k GQA row (torch 2.11)
    "fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3,
    "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
    "bwd_num_warps": 8, "bwd_num_stages": 3,
}
# name: (torch.compile's dynamic flag, kernel options). The library compiles with dynamic=None,
# i.e. static for the first shape it sees and a dynamic-shape kernel after a shape changes.
VARIANTS = {
    "static, default options": (False, None),
    "static, tuned options": (False, TUNED),
    "dynamic, default options": (True, None),
    "dynamic, tuned options": (True, TUNED),
}


def variant_run(dynamic: bool, options):
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=dynamic)

    def run(q, k, v, kwargs):
        return compiled(q, k, v, block_mask=kwargs["attention_mask"], enable_gqa=q.shape[1] != k.shape[1],
                        kernel_options=dict(options) if options else None)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="*", default=[16384, 32768])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--variants", nargs="*", help=f"subset of {list(VARIANTS)}")
    cli = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    args = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16, seqs=cli.seqs, heads=16, gqa_kv_heads=4,
                           head_dim=128, image_tokens=1024, iters=cli.iters, cpu_smoke=False, quick=False)
    chosen = {k: v for k, v in VARIANTS.items() if not cli.variants or k in cli.variants}
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; amylum BlockMask (128x128) with FlexAttention "
          "kernel options; useful TFLOP/s over allowed entries; ×flash vs SDPA flash causal, same row")
    print(f"{'case':<36} {'seq':>6} {'variant':<32} {'f+b ms':>8} {'TFLOP/s':>8} {'×flash':>7}")
    best: dict[str, tuple[str, float]] = {}
    started = time.perf_counter()
    for case, seq, samples, kv_heads in base.cases(args):
        batch, useful, (q, k, v, dout) = base.row_inputs(args, seq, samples, kv_heads)
        H, D = args.heads, args.head_dim
        _, run_flash = base.method_flash_causal(args)
        _, flash_total, _ = base.measure(args, run_flash, None, q, k, v, dout, True)
        flash_rate = 3.5 * 4 * H * D * seq * (seq + 1) / 2 / flash_total / 1e12
        print(f"{case[:36]:<36} {seq:>6} {'flash causal (SDPA)':<32} {flash_total * 1e3:>8.2f} {flash_rate:>8.1f} {1.0:>7.2f}",
              flush=True)
        state = attention_inputs(batch, backend="flex", block_size=128)
        for name, options in chosen.items():
            try:
                torch._dynamo.reset()  # each variant compiles afresh: no cache entry shared across variants
                run = variant_run(*options)
                _, total, _ = base.measure(args, run, state, q, k, v, dout, True)
                rate = 3.5 * 4 * H * D * useful / total / 1e12
                ratio = rate / flash_rate
                print(f"{case[:36]:<36} {seq:>6} {name:<32} {total * 1e3:>8.2f} {rate:>8.1f} {ratio:>7.2f}", flush=True)
                key = f"{case} @ {seq}"
                if key not in best or ratio > best[key][1]:
                    best[key] = (name, ratio)
            except Exception as e:  # one variant failing to compile must not hide the others
                msg = str(e).splitlines()[0][:80] if str(e) else ""
                print(f"{case[:36]:<36} {seq:>6} {name:<32} failed: {type(e).__name__}: {msg}", flush=True)
            torch.cuda.empty_cache()
    print("# best variant per row")
    for key, (name, ratio) in best.items():
        print(f"  {key}: {name} ×{ratio:.2f}")
    print(f"# total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
