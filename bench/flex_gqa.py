#!/usr/bin/env python
"""FlexAttention fwd+bwd under GQA on short rows: native GQA vs K/V expanded to the query heads.

    python bench/flex_gqa.py            # H100/H200: the VLM step's shape and longer rows
    python bench/flex_gqa.py --cpu-smoke

Why: in the single-GPU step (issue 5) the FlexAttention backward costs 4.8× its forward on
Qwen2-1.5B's shape (12 query / 2 KV heads × 128, 4 rows of 1,753 tokens). The backward's
dK/dV kernel runs one program per (row, KV head, key tile): 4 × 2 × 14 = 112 programs for
132 SMs, so the GPU is under-filled. Expanding K/V to the 12 query heads gives 6× the
programs at the price of a K/V copy and a sum of dK/dV over each group (both small next to
attention at these lengths). The table tells where the crossover is.

Mask: each row is [16 prompt | 729 image (bidirectional) | text (causal)], the VLM preset's.
"""

from __future__ import annotations

import argparse
import statistics

import torch


def _mask(rows: int, seq: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def mm(b, h, q, k):
        image = (q >= 16) & (q < 745) & (k >= 16) & (k < 745)
        return (q >= k) | image

    return create_block_mask(mm, rows, None, seq, seq, device=device)


def _time(fn, iters: int, device: str) -> float:
    import time

    times = []
    for i in range(iters + 3):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            t = a.elapsed_time(b)
        else:
            t0 = time.perf_counter()
            fn()
            t = (time.perf_counter() - t0) * 1e3
        if i >= 3:
            times.append(t)
    return statistics.median(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--shapes", default="4x1753,2x3506,1x7012,1x16384", help="rows x tokens, comma-separated")
    ap.add_argument("--heads", default="12/2", help="query heads / KV heads")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention

    if args.cpu_smoke:
        device, dtype, shapes, iters = "cpu", torch.float32, [(1, 800)], 1
        compiled = flex_attention  # eager on CPU (forward only there: time the forward)
    else:
        device, dtype, iters = "cuda", torch.bfloat16, args.iters
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
        compiled = torch.compile(flex_attention, dynamic=False)
        print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__}")
    h, kvh = (int(x) for x in args.heads.split("/"))
    group = h // kvh
    print(f"# FlexAttention fwd{'' if args.cpu_smoke else '+bwd'}, {h}/{kvh} heads × {args.dim}, bf16, median of {iters}")
    print("| rows × tokens | native GQA ms | expanded K/V ms | expanded / native | fwd only native ms |")
    print("|---|---|---|---|---|")
    for rows, seq in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(rows, h, seq, args.dim, device=device, dtype=dtype, generator=g, requires_grad=not args.cpu_smoke)
        k = torch.randn(rows, kvh, seq, args.dim, device=device, dtype=dtype, generator=g, requires_grad=not args.cpu_smoke)
        v = torch.randn(rows, kvh, seq, args.dim, device=device, dtype=dtype, generator=g, requires_grad=not args.cpu_smoke)
        do = torch.randn(rows, h, seq, args.dim, device=device, dtype=dtype, generator=g)
        bm = _mask(rows, seq, device)

        def native():
            out = compiled(q, k, v, block_mask=bm, enable_gqa=True)
            if not args.cpu_smoke:
                out.backward(do)

        def expanded():
            ke, ve = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            out = compiled(q, ke, ve, block_mask=bm)
            if not args.cpu_smoke:
                out.backward(do)

        def fwd():
            with torch.no_grad():
                compiled(q, k, v, block_mask=bm, enable_gqa=True)

        if not args.cpu_smoke:  # same result both ways
            native()
            ref = (q.grad.clone(), k.grad.clone())
            q.grad = k.grad = v.grad = None
            expanded()
            assert torch.allclose(q.grad, ref[0], atol=2e-2, rtol=2e-2) and torch.allclose(k.grad, ref[1], atol=5e-2, rtol=5e-2)
        t_n, t_e, t_f = _time(native, iters, device), _time(expanded, iters, device), _time(fwd, iters, device)
        print(f"| {rows} × {seq} | {t_n:.3f} | {t_e:.3f} | {t_e / t_n:.2f} | {t_f:.3f} |")


if __name__ == "__main__":
    main()
