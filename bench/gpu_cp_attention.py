#!/usr/bin/env python
"""Per-rank CP attention time on one GPU (issue 8): does the cost model predict the kernel?

    python bench/gpu_cp_attention.py                      # H100: 32k and 64k tokens × cp 8, 5 mask families
    python bench/gpu_cp_attention.py --seq 65536 --families packed_rows
    python bench/gpu_cp_attention.py --cpu-smoke          # tiny, CPU, dense-mask SDPA instead of FlexAttention

Each CP rank's attention is its query subset (the tokens a policy gives it) against the whole
sequence's K/V (what all-gather CP computes), under the multimodal mask restricted to those
queries (``amylum.parallel.cp_attention.rect_block_mask``). Ranks are simulated one after
another on the one device: forward + backward of FlexAttention (bf16, Llama-3.1-8B heads:
32 query / 8 KV heads × 128), GPU kernel time from the profiler's trace, mean of ``--iters`` steps. Each rank's queries are
padded (fully masked rows, no tiles) to a multiple of ``--pad`` so that a handful of static
kernels serve every rank, as one static kernel serves each rank of a real CP group.

Two phases, as a user would calibrate:
1. **Calibration**: the ``uniform``, ``zigzag`` and ``scattered`` (blocks dealt in a random
   order, so that the set spans contiguous and scattered layouts) ranks of every family and
   length are timed, and one ``AttentionKernelFit`` is fitted over all of them (non-negative
   least squares on relative error) and written to ``--fit-out``: seconds per partial tile,
   full tile, query tile, rank call, key tile of the sequence, and query tile on the rank's
   busiest key tile (``CPWorkModel``'s fields say why each).
2. **Held out**: ``makespan_attn`` (Cornstarch), ``makespan``, ``balanced`` and ``contiguous``
   plan with the calibrated model (``CPWorkModel.with_kernel_fit``) and are timed. The
   planner's own ``rank_work`` predicts each rank's attention time; the table gives the worst
   relative error per policy, and the measured vs predicted max/mean.
For comparison, the entries-only model (time ∝ allowed entries, one rate from uniform's ranks)
is applied to the same ranks.
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

from amylum.planner.cp_balance import (  # noqa: E402
    AttentionKernelFit, CPWorkModel, default_work_model, flat_intervals, plan_cp, rank_work)
from amylum.planner.cp_blocks import (  # noqa: E402
    CPAssignment, block_starts, block_tiles, block_tokens, effective_block_size, key_tile_visits)
from amylum.parallel.cp_attention import rect_block_mask  # noqa: E402
from cp_balance import FAMILIES, family  # noqa: E402  (the benchmark's mask families)

CALIBRATION = ("uniform", "zigzag", "scattered")  # scattered: a random permutation of blocks, equal counts
HELD_OUT = ("makespan_attn", "makespan", "balanced", "contiguous")


def _time_rank(lo, hi, seq, pad, heads, kv_heads, dim, device, dtype, iters, kernels) -> float:
    """Median seconds of one rank's attention fwd+bwd: its queries (intervals lo/hi) against ``seq`` keys."""
    q_len = lo.size
    padded = -(-q_len // pad) * pad
    # padding rows see no key: no tiles, no work, but a shared static kernel length
    lo = np.concatenate([lo, np.full(padded - q_len, 2 * seq + 1)])
    hi = np.concatenate([hi, np.full(padded - q_len, -1)])
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, padded, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(1, kv_heads, seq, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    v = torch.randn(1, kv_heads, seq, dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    grad = torch.randn(1, heads, padded, dim, device=device, dtype=dtype, generator=g)
    lo_t, hi_t = torch.as_tensor(lo, device=device), torch.as_tensor(hi, device=device)
    if kernels is None:  # CPU smoke: dense mask, SDPA (padding rows get one key so softmax stays finite)
        keys = torch.arange(seq, device=device)
        mask = ((keys >= lo_t[:, None]) & (keys <= hi_t[:, None])) | (hi_t[:, None] < 0) & (keys == 0)

        def step():
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], enable_gqa=True)
            out.backward(grad)
    else:
        block_mask = rect_block_mask(lo_t, hi_t, seq, 128)
        fn = kernels.get(padded, seq)

        def step():
            fn(q, k, v, block_mask, None, True, None).backward(grad)

    for _ in range(2):  # warm-ups (the first compiles)
        step()
        q.grad = k.grad = v.grad = None
    if device.type != "cuda":
        import time

        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            q.grad = k.grad = v.grad = None
        return statistics.median(times)
    # GPU time of the kernels themselves, summed from the profiler's trace: CUDA events around
    # a step also count the host's launch and guard time whenever the GPU runs ahead of it. A
    # 1-2 ms rank is host-bound that way: CUDA events once gave one packed-rows rank 3.15 ms
    # against its peers' 1.5 ms, where the kernels take 1.2 ms on every rank.
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
            q.grad = k.grad = v.grad = None
        torch.cuda.synchronize()
    kernel_us = sum(e.self_device_time_total for e in prof.key_averages())
    return kernel_us / 1e6 / iters


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients (few columns: drop negatives and refit)."""
    active = list(range(X.shape[1]))
    while True:
        coef = np.zeros(X.shape[1])
        coef[active] = np.linalg.lstsq(X[:, active], y, rcond=None)[0]
        negative = [j for j in active if coef[j] < 0]
        if not negative:
            return coef
        active.remove(min(negative, key=lambda j: coef[j]))


def _tile_features(lo, hi, blocks, tile: int = 128) -> list[float]:
    """The fit's regressors for one rank, in ``AttentionKernelFit``'s field order: partial tiles,
    full tiles, query tiles, 1 (the call), key tiles of the whole sequence (all-gather CP: the
    call runs over every key), query tiles on the most-visited key tile."""
    partial, full = block_tiles(lo, hi, tile, tile)
    q_tiles = np.ceil(block_tokens(lo.size, tile) / tile)
    b = list(blocks)
    return [float(partial[b].sum()), float(full[b].sum()), float(q_tiles[b].sum()), 1.0, float(-(-lo.size // tile)),
            key_tile_visits(lo, hi, tile, b, tile)]


def _scattered(n: int, cp: int, seed: int) -> CPAssignment:
    """Blocks dealt to ranks in a random order: a calibration layout unlike the contiguous ones."""
    block = effective_block_size(n, cp, 128)
    order = np.random.default_rng(seed).permutation(len(block_starts(n, block)))
    return CPAssignment(n, block, tuple(tuple(sorted(int(b) for b in order[r::cp])) for r in range(cp)), "scattered")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--seq", default="32768,65536", help="comma-separated sequence lengths")
    ap.add_argument("--cp", type=int, default=8)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--pad", type=int, default=1024, help="pad each rank's queries to a multiple of this")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--fit-out", default="", help="write the fitted AttentionKernelFit (JSON) here")
    ap.add_argument("--dump", default="", help="write every rank's measurement and regressors (JSON) here")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        device, dtype, kernels = torch.device("cpu"), torch.float32, None
        seqs, cp, heads, kv_heads, dim, iters, pad = [2048], 4, 2, 1, 16, 2, 128
        name = "cpu"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --cpu-smoke for the CPU check")
        from amylum.attention.backends import FlexKernels

        device, dtype = torch.device("cuda"), torch.bfloat16
        seqs, cp, heads, kv_heads, dim, iters, pad = [int(x) for x in args.seq.split(",")], args.cp, 32, 8, 128, args.iters, args.pad
        kernels = FlexKernels(static_limit=64)  # one static kernel per padded length, as on a real rank
        name = torch.cuda.get_device_name()
        print(f"# {name} · torch {torch.__version__}")
    families = [f for f in args.families.split(",") if f]
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise SystemExit(f"unknown families {sorted(unknown)}; choose from {FAMILIES}")
    shape = f"{heads}/{kv_heads}x{dim}"
    print(f"# per-rank attention fwd+bwd, cp={cp}, {shape} heads, "
          f"{'dense SDPA (CPU smoke), wall median' if kernels is None else 'FlexAttention, kernel time, mean'} of {iters}")
    masks = {(n, fam): flat_intervals(family(fam, np.random.default_rng(0), n)) for n in seqs for fam in families}

    def measure(n, fam, assignment):
        lo, hi = masks[(n, fam)]
        rows = []
        for r in range(cp):
            idx = assignment.token_indices(r)
            if idx.size:
                t = _time_rank(lo[idx], hi[idx], n, pad, heads, kv_heads, dim, device, dtype, iters, kernels)
                rows.append((r, t, _tile_features(lo, hi, assignment.blocks[r]), float((hi[idx] - lo[idx] + 1).sum())))
        return rows

    # 1. calibration
    calib = {}
    for (n, fam) in masks:
        for policy in CALIBRATION:
            a = _scattered(n, cp, seed=n) if policy == "scattered" else plan_cp(*masks[(n, fam)], cp=cp, policy=policy)
            calib[(n, fam, policy)] = (a, measure(n, fam, a))
    X = np.array([feat for _, rows in calib.values() for _, _, feat, _ in rows])
    y = np.array([t for _, rows in calib.values() for _, t, _, _ in rows])
    coef = _nnls(X / y[:, None], np.ones_like(y))  # least relative error: the target is relative
    fit = AttentionKernelFit(*map(float, coef), tile=128, device=name, heads=shape)  # field order = regressors
    calib_err = float(np.max(np.abs(X @ coef - y) / y))
    uni = [(t, e) for (n, fam, p), (_, rows) in calib.items() if p == "uniform" for _, t, _, e in rows]
    per_entry = sum(t * e for t, e in uni) / sum(e * e for _, e in uni)  # entries-only model, through 0
    print(f"\nfit on {len(y)} calibration ranks (uniform, zigzag, scattered): {coef[0] * 1e6:.3f} µs / partial tile, "
          f"{coef[1] * 1e6:.3f} µs / full tile, {coef[2] * 1e6:.3f} µs / query tile, {coef[3] * 1e6:.1f} µs / call, "
          f"{coef[4] * 1e6:.3f} µs / key tile, {coef[5] * 1e6:.3f} µs / query tile on the busiest key tile; "
          f"worst in-sample error {calib_err * 100:.1f} %")
    if args.fit_out:
        fit.save(args.fit_out)
        print(f"fit written to {args.fit_out}")

    # 2. held out: plan with the calibrated model, predict with the planner's rank_work
    layer = default_work_model().with_kernel_fit(fit)  # whole layer: calibrated attention + nominal linear part
    attention_only = CPWorkModel(0.0, 0.0, 0.0, 0.0).with_kernel_fit(fit)  # the attention kernel alone
    print("\n| tokens | family | policy | measured ms per rank (min–max) | measured max/mean | predicted max/mean | "
          "worst err (tile model) | worst err (entries model) |")
    print("|---|---|---|---|---|---|---|---|")
    worst, dump = {}, []
    for (n, fam) in masks:
        lo, hi = masks[(n, fam)]
        results = {p: calib[(n, fam, p)] for p in CALIBRATION}
        for policy in HELD_OUT:
            a = plan_cp(lo, hi, cp=cp, policy=policy, model=layer)
            results[policy] = (a, measure(n, fam, a))
        for policy, (a, rows) in results.items():
            pred_all = rank_work(a, lo, hi, model=attention_only, traffic=False).compute
            meas = np.array([t for _, t, _, _ in rows])
            pred = np.array([pred_all[r] for r, _, _, _ in rows])
            ent = np.array([per_entry * e for _, _, _, e in rows])
            err_t = float(np.max(np.abs(pred - meas) / meas))
            err_e = float(np.max(np.abs(ent - meas) / meas))
            tag = "calibration" if policy in CALIBRATION else "held out"
            dump += [dict(seq=n, family=fam, policy=policy, rank=r, seconds=t, features=f, entries=e)
                     for r, t, f, e in rows]
            worst.setdefault(tag, []).append(err_t)
            print(f"| {n // 1024}k | {fam} | {policy}{' (calib.)' if policy in CALIBRATION else ''} | "
                  f"{meas.min() * 1e3:.2f}–{meas.max() * 1e3:.2f} | {meas.max() / meas.mean():.3f} | "
                  f"{pred.max() / pred.mean():.3f} | {err_t * 100:.1f} % | {err_e * 100:.1f} % |")
    if args.dump:
        import json

        Path(args.dump).write_text(json.dumps(dump))
    for tag, errs in worst.items():
        print(f"# {tag}: worst per-rank error of the tile model {max(errs) * 100:.1f} % "
              f"(median of per-policy worsts {statistics.median(errs) * 100:.1f} %)")


if __name__ == "__main__":
    main()
