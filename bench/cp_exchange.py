#!/usr/bin/env python
"""CP K/V exchanges measured on real process groups (gloo, CPU): all-gather vs mask-aware sparse.

    python bench/cp_exchange.py              # cp 8, 64k and 128k tokens, 3 mask families, 4 policies (~2 min, 2 cores)
    python bench/cp_exchange.py --cp 4 --sizes 16384

Each of ``cp`` processes holds its tokens' K/V for one layer (a value that encodes each
token's global position), runs the runtime's exchange (``amylum.parallel.cp_exchange``)
forward and backward, and records the bytes that actually arrived and the K/V it held for
attention (``KVTraffic``). It checks that every key it got is the right token's and that
each token's dK/dV came back to its owner from every rank that used it. Attention itself is
not run (the dense CPU reference at 128k tokens would need an (n_local × S) mask per rank).

Figures are printed per layer, max over ranks, converted to Llama-3.1-8B's 4 KiB of K+V per
token (8 KV heads × 128 dims, bf16); the run moves ``--width`` fp32 values per token and the
conversion is exact (bytes scale with tokens). The simulation column is
``planner.cp_traffic.rank_work`` on the same mask and assignment; ``sparse = sim`` says
whether the measured received tokens equal the simulation on every rank. The all-gather's
collective also moves padding up to the largest rank's token count: "wire" is what arrived.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LLAMA_KV_BYTES = 2 * 8 * 128 * 2
FAMILIES = ("packed_rows", "interleaved_docs", "images_in_text")
POLICIES = ("uniform", "zigzag", "balanced", "contiguous")


def _configs(sizes, seed):
    from cp_balance import family  # the simulation benchmark's mask families (same seeds: same masks)

    from amylum.planner.cp_balance import flat_intervals

    for fam in FAMILIES:
        for n in sizes:
            lo, hi = flat_intervals(family(fam, np.random.default_rng(seed + n), n))
            for policy in POLICIES:
                yield fam, n, policy, lo, hi


def _one(rank, cp, lo, hi, policy, exchange, width):
    """One layer's exchange on this rank: (received tokens, received bytes, held tokens, held bytes)."""
    import torch

    from amylum.parallel.cp_exchange import AllGatherKV, KVTraffic, SparseKV, sparse_kv_plan
    from amylum.planner.cp_balance import plan_cp, received_keys

    a = plan_cp(lo, hi, cp=cp, policy=policy)
    idx = a.token_indices(rank)
    t = lambda x: torch.as_tensor(x, dtype=torch.long)  # noqa: E731
    pos = t(idx).to(torch.float32)
    kv = (pos[:, None] * width + torch.arange(width)).reshape(1, 1, -1, width).requires_grad_(True)
    if exchange == "sparse":
        plan = sparse_kv_plan(a, lo, hi, rank)
        ex, keys_at = SparseKV(plan), plan.key_positions
    else:
        order = np.empty(a.seq_len, dtype=np.int64)
        order[np.concatenate([a.token_indices(r) for r in range(cp)])] = np.arange(a.seq_len)
        ex, keys_at = AllGatherKV(tuple(a.token_counts()), t(order), t(lo[idx]), t(hi[idx])), torch.arange(a.seq_len)
    ex.traffic = KVTraffic()
    keys = ex(kv)
    want = keys_at.to(torch.float32)[:, None] * width + torch.arange(width)
    if not torch.equal(keys[0, 0], want):
        raise AssertionError(f"{exchange} rank {rank}: keys are not the right tokens'")
    keys.backward(torch.ones_like(keys))
    # each token's gradient is the number of ranks that held it as a key (itself included)
    owner = a.owner()
    users = np.ones(idx.size)
    if exchange == "sparse":
        for r in range(cp):
            if r != rank:
                got = received_keys(a, lo, hi, r, owner=owner)
                users += np.isin(idx, got)
    else:
        users += cp - 1
    if not torch.equal(kv.grad[0, 0, :, 0], torch.as_tensor(users, dtype=torch.float32)):
        raise AssertionError(f"{exchange} rank {rank}: dK/dV did not come back to their owner")
    tr = ex.traffic
    return tr.received_tokens[0], tr.received_bytes[0], tr.held_tokens[0], tr.held_bytes[0]


def _worker(rank, cp, port, sizes, seed, width, queue):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=cp, timeout=datetime.timedelta(seconds=120))
        out = {}
        for fam, n, policy, lo, hi in _configs(sizes, seed):
            for exchange in ("allgather", "sparse"):
                out[(fam, n, policy, exchange)] = _one(rank, cp, lo, hi, policy, exchange, width)
        queue.put((rank, "ok", out))
    except BaseException as e:  # the parent reports it
        import traceback

        queue.put((rank, "error", f"{e!r}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cp, sizes, seed, width):
    from amylum.runtime.distributed.launch import free_local_port

    port = free_local_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, cp, port, sizes, seed, width, queue)) for r in range(cp)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in range(cp):
            rank, status, payload = queue.get(timeout=600)
            if status != "ok":
                raise SystemExit(f"rank {rank} failed:\n{payload}")
            results[rank] = payload
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(cp)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--cp", type=int, default=8)
    ap.add_argument("--sizes", type=lambda s: tuple(int(x) for x in s.split(",")), default=(65536, 131072))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16, help="fp32 values of K+V per token moved in the run")
    args = ap.parse_args(argv)
    from amylum.planner.cp_balance import plan_cp, rank_work

    t0 = time.perf_counter()
    per_rank = run(args.cp, args.sizes, args.seed, args.width)
    run_bytes = 4 * args.width  # per token in this run
    mib = 2**20 / LLAMA_KV_BYTES  # tokens per MiB of Llama-3.1-8B K/V
    print(f"# cp={args.cp}, one layer, max over ranks, MiB of Llama-3.1-8B K/V ({LLAMA_KV_BYTES} B/token); "
          f"measured on gloo ({run_bytes} B/token moved, scaled exactly)")
    print("| family | tokens | policy | received all-gather: wire / sim | received sparse: measured / sim "
          "| held K/V all-gather: measured / sim | held K/V sparse: measured / sim | sparse = sim |")
    print("|---|---|---|---|---|---|---|---|")
    all_match = True
    for fam, n, policy, lo, hi in _configs(args.sizes, args.seed):
        w = rank_work(plan_cp(lo, hi, cp=args.cp, policy=policy), lo, hi, kv_bytes_per_token=1)
        ag = [r[(fam, n, policy, "allgather")] for r in per_rank]
        sp = [r[(fam, n, policy, "sparse")] for r in per_rank]
        for got in ag + sp:  # bytes are the tokens' bytes: nothing else travelled
            assert got[3] == got[2] * run_bytes
        match = all(s[0] == int(w.kv_bytes_sparse[r]) and s[2] == int(w.kv_peak_sparse[r]) for r, s in enumerate(sp))
        all_match &= match
        cells = [
            f"{max(a[1] for a in ag) / run_bytes / mib:.1f} / {max(w.kv_bytes_allgather) / mib:.1f}",
            f"{max(s[1] for s in sp) / run_bytes / mib:.1f} / {max(w.kv_bytes_sparse) / mib:.1f}",
            f"{max(a[2] for a in ag) / mib:.1f} / {max(w.kv_peak_allgather) / mib:.1f}",
            f"{max(s[2] for s in sp) / mib:.1f} / {max(w.kv_peak_sparse) / mib:.1f}",
        ]
        print(f"| {fam} | {n // 1024}k | {policy} | " + " | ".join(cells) + f" | {'yes' if match else 'NO'} |")
    print(f"\nsparse exchange equals the simulation on every rank of every case: {'yes' if all_match else 'NO'}")
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
