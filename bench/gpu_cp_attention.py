#!/usr/bin/env python
"""Per-rank CP attention time on one GPU (issue 8): does the cost model predict the kernel?

    python bench/gpu_cp_attention.py                # H100: 2 masks × 32k tokens × cp 8, every policy (~2 min)
    python bench/gpu_cp_attention.py --seq 65536    # longer
    python bench/gpu_cp_attention.py --cpu-smoke    # tiny, CPU, dense-mask SDPA instead of FlexAttention

Each CP rank's attention is its query subset (the tokens a policy gives it) against the whole
sequence's K/V (what all-gather CP computes), under the multimodal mask restricted to those
queries (``amylum.parallel.cp_attention.rect_block_mask``). Ranks are simulated one after
another on the one device: forward + backward of FlexAttention (bf16, Llama-3.1-8B heads:
32 query / 8 KV heads × 128), CUDA-event timed, median of ``--iters``.

Predictions, from the same run:
- ``entries``: time ∝ allowed mask entries (the planner's attention model), one rate fitted
  on the uniform policy's ranks;
- ``tiles``: time = a·(partial tiles) + b·(full tiles) + c·(query blocks), fitted on the
  uniform policy's ranks (the kernel skips empty 128×128 tiles and evaluates the mask only on
  partial ones).
Both are then applied to every other policy's ranks; the report gives the worst relative
error per policy and the measured vs predicted max/mean. The fitted entries rate is the
``attn_rate`` to give ``CPWorkModel.from_shape``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.planner.cp_balance import default_work_model, flat_intervals, plan_cp  # noqa: E402
from amylum.parallel.cp_attention import rect_block_mask, rect_tile_tables  # noqa: E402
from cp_balance import FAMILIES, family  # noqa: E402  (the benchmark's mask families)

POLICIES = ("uniform", "zigzag", "makespan_attn", "makespan", "balanced", "contiguous")


def _time_rank(q_len, seq, lo, hi, heads, kv_heads, dim, device, dtype, iters, dense: bool) -> float:
    from amylum.attention.backends import run_flex

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, q_len, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(1, kv_heads, seq, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    v = torch.randn(1, kv_heads, seq, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    grad = torch.randn(1, heads, q_len, dim, device=device, dtype=dtype, generator=g)
    lo_t, hi_t = torch.as_tensor(lo, device=device), torch.as_tensor(hi, device=device)
    if dense:
        keys = torch.arange(seq, device=device)
        mask = ((keys >= lo_t[:, None]) & (keys <= hi_t[:, None]))[None, None]

        def step():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            out.backward(grad)
    else:
        block_mask = rect_block_mask(lo_t, hi_t, seq, 128)

        def step():
            run_flex(q, k, v, block_mask).backward(grad)

    times = []
    for i in range(iters + 2):  # two warm-ups (the first compiles)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            t = start.elapsed_time(end) / 1e3
        else:
            import time

            t0 = time.perf_counter()
            step()
            t = time.perf_counter() - t0
        q.grad = k.grad = v.grad = None
        if i >= 2:
            times.append(t)
    return statistics.median(times)


def _features(lo, hi, seq):
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    partial, full = rect_tile_tables(lo_t, hi_t, seq, 128, 128)
    return float((hi - lo + 1).sum()), float(partial.sum()), float(full.sum()), float(partial.shape[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--seq", type=int, default=32768)
    ap.add_argument("--cp", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--families", default="images_in_text,packed_rows")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        device, dtype, dense = torch.device("cpu"), torch.float32, True
        seq, cp, heads, kv_heads, dim, iters = 2048, 4, 2, 1, 16, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-smoke for the CPU check")
        device, dtype, dense = torch.device("cuda"), torch.bfloat16, False
        seq, cp, heads, kv_heads, dim, iters = args.seq, args.cp, 32, 8, 128, args.iters
        print(f"# {torch.cuda.get_device_name()} · torch {torch.__version__}")
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    model = default_work_model()
    print(f"# per-rank attention fwd+bwd, {seq} tokens, cp={cp}, {heads}/{kv_heads} heads × {dim}, "
          f"{'dense SDPA (CPU smoke)' if dense else 'FlexAttention'}")
    print("| family | policy | measured ms per rank (min–max) | measured max/mean | entries-pred max/mean | "
          "tiles-pred max/mean | worst err entries | worst err tiles |")
    print("|---|---|---|---|---|---|---|---|")
    fitted_rates = []
    for fam in families:
        lo, hi = flat_intervals(family(fam, np.random.default_rng(0), seq))
        rows = {}
        for policy in POLICIES:
            a = plan_cp(lo, hi, cp=cp, policy=policy, model=model)
            per_rank = []
            for r in range(cp):
                idx = a.token_indices(r)
                if idx.size == 0:
                    continue
                t = _time_rank(idx.size, seq, lo[idx], hi[idx], heads, kv_heads, dim, device, dtype, iters, dense)
                per_rank.append((t, *_features(lo[idx], hi[idx], seq)))
            rows[policy] = np.array(per_rank)
        base = rows["uniform"]
        # entries model: t = rate⁻¹ · entries (one parameter, through the origin)
        c_e = float((base[:, 0] * base[:, 1]).sum() / (base[:, 1] ** 2).sum())
        # tiles model: t = a·partial + b·full + c·query blocks (least squares)
        X = base[:, 2:5]
        coef, *_ = np.linalg.lstsq(np.vstack([X, rows["zigzag"][:, 2:5]]),
                                   np.concatenate([base[:, 0], rows["zigzag"][:, 0]]), rcond=None)
        fitted_rates.append(4 * heads * dim * 3 / c_e)  # fwd+bwd FLOPs per entry (bwd = 2× fwd) per second
        for policy, m in rows.items():
            meas = m[:, 0]
            pe = c_e * m[:, 1]
            pt = m[:, 2:5] @ coef
            ratio = lambda x: float(x.max() / x.mean())  # noqa: E731
            err_e = float(np.max(np.abs(pe - meas) / meas))
            err_t = float(np.max(np.abs(pt - meas) / meas))
            print(f"| {fam} | {policy} | {meas.min() * 1e3:.2f}–{meas.max() * 1e3:.2f} | {ratio(meas):.3f} | "
                  f"{ratio(pe):.3f} | {ratio(pt):.3f} | {err_e * 100:.1f} % | {err_t * 100:.1f} % |")
    print(f"\nfitted attention rate (fwd+bwd model FLOPs per second, from uniform's ranks): "
          + ", ".join(f"{r / 1e12:.1f} TFLOP/s" for r in fitted_rates))
    print("(entries model fitted on uniform only; tiles model fitted on uniform + zigzag; others are held out)")


if __name__ == "__main__":
    main()
