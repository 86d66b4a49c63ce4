#!/usr/bin/env python
"""CP token assignment under multimodal masks (issue 8): per-rank work of every policy, simulated.

    python bench/cp_balance.py                 # 5 families × 32k/64k/128k × cp 2/4/8/32, 10 masks each (~2 min, 2 cores)
    python bench/cp_balance.py --quick         # 32k and 64k, 4 masks: smoke run
    python bench/cp_balance.py --planner       # the planner's CP choice: best plan with and without CP (~3 min)

Per-rank work is computed, not measured: allowed mask entries per 128-token query block
(counted from the O(S) intervals) × fwd+bwd cost per entry, plus tokens × fwd+bwd cost of the
rest of the layer, both from the planner's cost model for a Llama-3.1-8B decoder layer at the
H100's nominal rate (``CPWorkModel.from_shape``; uncalibrated until bench/gpu_cp_attention.py
gives a rate). Every policy is scored with the same whole-layer model:

- uniform        contiguous equal split
- zigzag         2·cp chunks, rank i takes i and 2·cp−1−i
- lpt_attn       Cornstarch's makespan_min: LPT on attention entries only
- makespan       LPT on the whole-layer block weights
- balanced       amylum: whole-layer LPT + move/swap refinement (+ exact search for few blocks)
- contiguous     amylum: min-max contiguous runs of blocks under the whole-layer weights
                 (locality for a mask-aware K/V exchange)

Mask families (random, seeded; images 1,024 tokens unless stated, each image / clip its own
bidirectional segment, DESIGN §5): images embedded in one long text sample; interleaved
image–text documents packed in a row; audio (1,500-token clips) + images in one sample;
packed rows of short samples (576-token images, trailing padding); video-like runs of
256-token frames.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amylum.attention import mask_spec  # noqa: E402
from amylum.planner.cp_balance import CPWorkModel, default_work_model, flat_intervals, plan_cp, rank_work  # noqa: E402

POLICIES = {"uniform": "uniform", "zigzag": "zigzag", "lpt_attn": "makespan_attn", "makespan": "makespan",
            "balanced": "balanced", "contiguous": "contiguous"}
KV_BYTES = 2 * 8 * 128 * 2  # K and V, 8 KV heads × 128 dims, bf16: Llama-3.1-8B, per token per layer


# ---- mask families -------------------------------------------------------------------------
def _fill(n: int, runs: list[tuple[int, int, int]]):
    """runs: (sample id or -1, segment id or -1, length) left to right, cut at n tokens."""
    sample = np.full(n, -1, dtype=np.int64)
    segment = np.full(n, -1, dtype=np.int64)
    pos = 0
    for sid, seg, length in runs:
        length = min(length, n - pos)
        if length <= 0:
            break
        sample[pos : pos + length] = sid
        segment[pos : pos + length] = seg
        pos += length
    return sample, segment


def _sample_runs(rng, sid: int, length: int, items: list[int], seg0: int):
    """One sample of ``length`` tokens with the given item sizes at random places in its text."""
    text = max(0, length - sum(items))
    cuts = np.sort(rng.integers(0, text + 1, size=len(items)))
    gaps = np.diff(np.concatenate([[0], cuts, [text]]))
    runs, seg = [], seg0
    for i, g in enumerate(gaps):
        if g:
            runs.append((sid, -1, int(g)))
        if i < len(items):
            runs.append((sid, seg, items[i]))
            seg += 1
    return runs, seg


def family(name: str, rng, n: int):
    if name == "images_in_text":
        k = int(rng.integers(n // 4096, n // 1536 + 1))
        runs, _ = _sample_runs(rng, 0, n, [1024] * k, 0)
    elif name == "interleaved_docs":
        runs, sid, seg, total = [], 0, 0, 0
        while total < n:
            length = int(rng.integers(4096, 16385))
            items = [int(rng.choice([576, 1024])) for _ in range(int(rng.integers(0, length // 1500 + 1)))]
            r, seg = _sample_runs(rng, sid, length, items, seg)
            runs += r
            sid, total = sid + 1, total + length
    elif name == "audio_image":
        items = [1500] * int(rng.integers(n // 8000, n // 4000 + 1)) + [1024] * int(rng.integers(n // 6000, n // 3000 + 1))
        rng.shuffle(items)
        runs, _ = _sample_runs(rng, 0, n, items, 0)
    elif name == "packed_rows":
        runs, sid, seg, total = [], 0, 0, 0
        fill = int(n * rng.uniform(0.9, 1.0))  # the rest is padding
        while total < fill:
            length = min(int(rng.integers(512, 4097)), fill - total)
            items = [576] * int(rng.integers(0, 3)) if length > 1200 else []
            r, seg = _sample_runs(rng, sid, length, items, seg)
            runs += r
            sid, total = sid + 1, total + length
    elif name == "video":
        runs, seg, total = [], 0, 0
        while total < n:
            prompt = int(rng.integers(64, 1025))
            frames = int(rng.integers(16, 257))
            answer = int(rng.integers(64, 2049))
            runs.append((0, -1, prompt))
            for _ in range(frames):
                runs.append((0, seg, 256))
                seg += 1
            runs.append((0, -1, answer))
            total += prompt + frames * 256 + answer
    else:
        raise ValueError(name)
    sample, segment = _fill(n, runs)
    batch = type("B", (), {})()
    batch.sample_ids, batch.segment_ids = torch.from_numpy(sample)[None], torch.from_numpy(segment)[None]
    return mask_spec(batch)


FAMILIES = ("images_in_text", "interleaved_docs", "audio_image", "packed_rows", "video")


# ---- runs -------------------------------------------------------------------------------------
def balance_table(sizes, cps, masks, model: CPWorkModel, block: int, seed: int):
    rows, plan_time = [], {p: 0.0 for p in POLICIES}
    for fam in FAMILIES:
        for n in sizes:
            rng = np.random.default_rng(seed + n)
            specs = [flat_intervals(family(fam, rng, n)) for _ in range(masks)]
            for cp in cps:
                imb = {p: [] for p in POLICIES}
                attn = {p: [] for p in POLICIES}
                vs_uniform = {p: [] for p in POLICIES}
                for lo, hi in specs:
                    spans = {}
                    for label, policy in POLICIES.items():
                        t0 = time.perf_counter()
                        a = plan_cp(lo, hi, cp=cp, policy=policy, block_size=block, model=model)
                        plan_time[label] = max(plan_time[label], time.perf_counter() - t0)
                        w = rank_work(a, lo, hi, model=model, traffic=False)
                        imb[label].append(w.imbalance)
                        attn[label].append(w.attn_imbalance)
                        spans[label] = w.makespan
                    for label in POLICIES:
                        vs_uniform[label].append(spans[label] / spans["uniform"])
                rows.append((fam, n, cp, imb, attn, vs_uniform))
    return rows, plan_time


def traffic_table(sizes, cp, model, block, seed):
    out = []
    for fam in FAMILIES:
        for n in sizes:
            lo, hi = flat_intervals(family(fam, np.random.default_rng(seed + n), n))
            for label in ("uniform", "zigzag", "balanced", "contiguous"):
                a = plan_cp(lo, hi, cp=cp, policy=POLICIES[label], block_size=block, model=model)
                w = rank_work(a, lo, hi, model=model, kv_bytes_per_token=KV_BYTES)
                out.append((fam, n, label, max(w.kv_bytes_allgather), max(w.kv_bytes_sparse),
                            max(w.kv_peak_allgather), max(w.kv_peak_sparse), w.imbalance))
    return out


def planner_table() -> None:
    """The planner's search with CP (cp ∈ 1, 2, 4, 8 for ≥ 16k tokens) against the same search without it."""
    from amylum.planner.configs import model_spec_from_configs
    from amylum.planner.presets import LLMS, preset_model
    from amylum.planner.search import SearchOptions, search
    from amylum.planner.spec import ClusterSpec, freeze

    cases = [("llama-3.1-8b", 2048, 16, 64), ("llama-3.1-8b", 65536, 16, 4), ("llama-3.1-8b", 131072, 32, 2),
             ("llama-3.1-70b", 65536, 64, 8), ("VLM-large", 65536, 1024, 64)]
    print("| model | tokens/sample | GPUs | global batch | with CP: s/iter, LLM stages (tp×cp), dp, plan s (CPU) "
          "| without CP: s/iter, LLM stages, dp, plan s (CPU) | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, tokens, gpus, batch in cases:
        if name in LLMS:
            model = model_spec_from_configs(name, LLMS[name], text_tokens=tokens)
        else:
            model = freeze(preset_model(name, text_tokens=tokens), "projector_only")
        row = []
        for opts in (SearchOptions(cp_min_tokens=0), SearchOptions(cp_choices=(1,))):
            c0 = time.process_time()
            res = search(model, ClusterSpec.of(gpus), batch, opts)
            llm = [f"{s.tp}×{s.cp}" for s in res.plan.stages if s.chain in ("llm", "colocated")]
            row.append((res.sim.iteration_s, f"{res.sim.iteration_s:.2f}, {len(llm)} × {llm[0]}, dp {res.plan.dp}, "
                                             f"{time.process_time() - c0:.1f}"))
        print(f"| {name} | {tokens // 1024}k | {gpus} | {batch} | {row[0][1]} | {row[1][1]} | {row[1][0] / row[0][0]:.2f}× |")


def _k(n):
    return f"{n // 1024}k"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--masks", type=int, default=None)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--planner", action="store_true", help="only the planner's CP choice")
    args = ap.parse_args(argv)
    if args.planner:
        planner_table()
        return
    sizes = (32768, 65536) if args.quick else (32768, 65536, 131072)
    masks = args.masks or (4 if args.quick else 10)
    cps = (2, 4, 8, 32)
    model = default_work_model()
    t0 = time.perf_counter()
    rows, plan_time = balance_table(sizes, cps, masks, model, args.block, args.seed)
    labels = list(POLICIES)
    print(f"# whole-layer max/mean per rank (fwd+bwd, Llama-3.1-8B layer, H100 nominal), median / worst of {masks} masks")
    print("| family | tokens | cp | " + " | ".join(labels) + " | attention-only max/mean: uniform / lpt_attn / balanced "
          "| balanced makespan vs uniform (median) |")
    print("|---|---|---|" + "---|" * len(labels) + "---|---|")
    for fam, n, cp, imb, attn, vs in rows:
        cells = [f"{statistics.median(imb[p]):.3f} / {max(imb[p]):.3f}" for p in labels]
        a = " / ".join(f"{statistics.median(attn[p]):.3f}" for p in ("uniform", "lpt_attn", "balanced"))
        print(f"| {fam} | {_k(n)} | {cp} | " + " | ".join(cells) + f" | {a} | {statistics.median(vs['balanced']):.3f} |")
    summary = {p: [] for p in labels}
    for fam, n, cp, imb, *_ in rows:
        for p in labels:
            summary[p].extend(imb[p])
    print("\n# all families, sizes and cp: median / worst whole-layer max/mean")
    for p in labels:
        print(f"- {p}: {statistics.median(summary[p]):.4f} / {max(summary[p]):.4f}   (slowest plan {plan_time[p] * 1e3:.0f} ms)")
    for cp in (8, 32):
        sel = [r for r in rows if r[2] == cp]
        med = statistics.median(v for r in sel for v in r[3]["balanced"])
        worst = max(v for r in sel for v in r[3]["balanced"])
        print(f"- balanced at cp={cp}: median {med:.4f}, worst {worst:.4f} (target ≤ 1.02 / ≤ 1.05)")
    big = tuple(s for s in sizes if s >= 65536)
    print(f"\n# K/V per rank per layer at cp=8 (first mask of each family): max over ranks, MiB; "
          f"all-gather vs mask-aware block sparse ({KV_BYTES} B/token)")
    print("| family | tokens | policy | layer max/mean | received all-gather | received sparse | peak K/V all-gather "
          "| peak K/V sparse |")
    print("|---|---|---|---|---|---|---|---|")
    mib = 2**20
    for fam, n, label, ag, sp, pag, psp, imb in traffic_table(big, 8, model, args.block, args.seed):
        print(f"| {fam} | {_k(n)} | {label} | {imb:.3f} | {ag / mib:.0f} | {sp / mib:.0f} | {pag / mib:.0f} | {psp / mib:.0f} |")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
