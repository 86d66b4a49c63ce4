#!/usr/bin/env python
"""FlexAttention's FLASH backend (FlashAttention-4's CuTe kernels) vs its Triton backend, amylum's mask.

    python bench/flex_flash.py          # H100/H200; needs the flash-attn-4 package for the FLASH rows

Why: in the single-GPU step (issue 5) FlexAttention's Triton kernels take about 21 ms of a
152 ms step (forward 5 ms, backward 16 ms, about 200 TFLOP/s on 4 rows of 1,769 tokens).
PyTorch's FlexAttention can also lower the same ``mask_mod`` + ``BlockMask`` to
FlashAttention-4 (``kernel_options={"BACKEND": "FLASH"}``), whose Hopper kernels use wgmma
and TMA. Same API, same mask, another kernel: this measures whether it pays on this shape
and checks that it computes the same function (output and the three gradients).

Mask: amylum's own interval mask (``amylum.attention.mask_spec`` + ``flex_block_mask``) for
rows of [16 prompt | 729 image (bidirectional) | text (causal)], the VLM preset's layout.
Times are GPU kernel time from the profiler (host launch time excluded), mean of ``--iters``.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.attention import flex_block_mask, mask_spec  # noqa: E402
from attention_compose import kernel_ms  # noqa: E402  (GPU kernel time from the profiler)

PROMPT, IMAGE = 16, 729


def vlm_block_mask(rows: int, seq: int, device: str):
    """amylum's BlockMask for rows of [prompt | image | text] (one sample per row)."""
    sample_ids = torch.zeros(rows, seq, dtype=torch.long)
    segment_ids = torch.full((rows, seq), -1, dtype=torch.long)
    segment_ids[:, PROMPT:PROMPT + IMAGE] = 0
    spec = mask_spec(types.SimpleNamespace(sample_ids=sample_ids, segment_ids=segment_ids), "multimodal")
    return flex_block_mask(spec.to(device))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1769)
    ap.add_argument("--heads", default="12/2", help="query heads / KV heads")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--trace", action="store_true", help="print the traceback of a failing method")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    from torch.nn.attention.flex_attention import flex_attention

    h, kvh = (int(x) for x in args.heads.split("/"))
    group = h // kvh
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(heads):
        return torch.randn(args.rows, heads, args.seq, args.dim, device="cuda", dtype=torch.bfloat16, generator=g)

    q, k, v = rand(h).requires_grad_(), rand(kvh).requires_grad_(), rand(kvh).requires_grad_()
    do = rand(h)
    bm = vlm_block_mask(args.rows, args.seq, "cuda")
    flex = torch.compile(flex_attention, dynamic=False)

    def method(backend: str, expand: bool):
        options = {"BACKEND": backend}

        def attn():
            if expand:
                ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                return flex(q, ke, ve, block_mask=bm, kernel_options=options)
            return flex(q, k, v, block_mask=bm, enable_gqa=True, kernel_options=options)
        return attn

    methods = {
        "triton, K/V expanded (amylum today)": method("TRITON", True),
        "triton, native GQA": method("TRITON", False),
        "flash (FA4), native GQA": method("FLASH", False),
        "flash (FA4), K/V expanded": method("FLASH", True),
    }
    print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__} · {args.rows} × {args.seq} tokens "
          f"({PROMPT} prompt, {IMAGE} image, rest text), {h}/{kvh} heads × {args.dim}, bf16; "
          f"GPU kernel ms, mean of {args.iters}")
    try:
        import flash_attn  # noqa: F401

        print(f"# flash-attn-4 {getattr(flash_attn, '__version__', '?')}")
    except ImportError as e:
        print(f"# flash_attn not importable: {e}")
    print("| method | fwd ms | fwd+bwd ms | vs first (fwd+bwd) | rel. diff out / dq / dk / dv vs first |")
    print("|---|---|---|---|---|")
    ref = base = None
    for name, attn in methods.items():
        try:
            for t in (q, k, v):
                t.grad = None
            out = attn()
            out.backward(do)
            got = (out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone())
            ref = ref or got
            diffs = " / ".join(f"{rel(a, b):.1e}" for a, b in zip(got, ref))

            def both():
                attn().backward(do)

            fwd = kernel_ms(lambda: attn().detach(), args.iters)
            total = kernel_ms(both, args.iters)
            base = base or total
            print(f"| {name} | {fwd:.3f} | {total:.3f} | {total / base:.2f} | {diffs} |", flush=True)
        except Exception as e:  # a backend this build lacks must not hide the others
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            print(f"| {name} | failed: {type(e).__name__}: {first} | | | |", flush=True)
            if args.trace:
                import traceback

                traceback.print_exc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
