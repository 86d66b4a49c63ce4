#!/usr/bin/env python
"""Could SDPA's fused kernels replace FlexAttention for the step's multimodal mask? Kernel time only.

    python bench/attention_compose.py       # H100/H200, the VLM step's attention shape

The single-GPU step's mask (bench/gpu_step.py) is causal except inside each image, whose rows
see the whole image. Row by row it splits into two dense problems with no log-sum-exp merge:
the image rows attend to keys [0, image end) without a mask, every other row is causal. So the
same output is SDPA causal over all rows, with the image rows overwritten by SDPA over the
image rows × the prefix keys. This measures each part and the composition against
FlexAttention, forward + backward, as GPU kernel time from the profiler (host launch time
excluded: in the step the GPU is 99 % busy, so kernel time is what a change would save).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flex_gqa import _mask  # noqa: E402

PROMPT, IMAGE = 16, 729


def kernel_ms(fn, iters: int) -> float:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.device_time for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3 / iters


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1753)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (args.rows, args.heads, args.seq, args.dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True) for _ in range(3))
    do = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    bm = _mask(args.rows, args.seq, "cuda")
    flex = torch.compile(flex_attention, dynamic=False)
    lo, hi = PROMPT, PROMPT + IMAGE

    def composed(backend):
        def attn():
            with sdpa_kernel(backend):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                img = F.scaled_dot_product_attention(q[:, :, lo:hi], k[:, :, :hi], v[:, :, :hi])
            return torch.cat([out[:, :, :lo], img, out[:, :, hi:]], dim=2)
        return attn

    def causal_only(backend):
        def attn():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return attn

    methods = {"flex (multimodal mask)": lambda: flex(q, k, v, block_mask=bm)}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        methods[f"sdpa {name} causal only (not the mask)"] = causal_only(backend)
        methods[f"sdpa {name} causal + image rows"] = composed(backend)
    ref = None
    print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__} · {args.rows} × {args.seq} tokens "
          f"({PROMPT} prompt, {IMAGE} image), {args.heads} heads × {args.dim}, bf16; GPU kernel ms, mean of {args.iters}")
    print("| method | fwd ms | fwd+bwd ms | vs flex (fwd+bwd) | max abs diff vs flex |")
    print("|---|---|---|---|---|")
    base = None
    for name, attn in methods.items():
        try:
            with torch.no_grad():
                out = attn()
            if ref is None:
                ref = out.float()
            diff = (out.float() - ref).abs().max().item()

            def both():
                attn().backward(do)

            fwd = kernel_ms(lambda: attn().detach(), args.iters)
            total = kernel_ms(both, args.iters)
            for t in (q, k, v):
                t.grad = None
            base = base or total
            print(f"| {name} | {fwd:.3f} | {total:.3f} | {total / base:.2f} | {diff:.2e} |", flush=True)
        except Exception as e:  # a backend this build lacks must not hide the others
            print(f"| {name} | failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''} | | | |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
