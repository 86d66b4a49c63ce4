#!/usr/bin/env python
"""Workload-balanced microbatches (issue 9): amylum's hierarchical assignment (even, and aimed at the
plan's pipeline load profile) against dataset order, random, sort-by-total-tokens greedy and LPT
on total work, measured in the same run.

    python bench/microbatch.py            # both workloads, 4 global batches each: ~1 min on 2 CPU cores
    python bench/microbatch.py --batches 1 --quick   # smoke run

Workloads are synthetic, shaped like real datasets (token counts through the models' own
ImageInputSpec / AudioInputSpec):
- LLaVA-style on VLM-small (Llama-3.1-8B + Pixtral-400M, 2,304 tokens per image): 0–8 images per
  sample with a long tail, text 32–4,096 tokens (log-normal, median 300);
- audio–visual on VALM-small (Mistral-7B + SigLIP-so400m 729 tokens per 384² image + Whisper-small):
  0–4 images, 80 % of samples with one 1–30 s clip, text 32–4,096 tokens (median 200).

Global batch 4,096 = 8 DP replicas × 16 microbatches × ~32 samples. Work per sample comes from the
planner's cost model (``coefficients_from_preset``, frozen encoders, trainable projectors + LLM).

Simulated iteration time: the static plan is chosen by the planner's ``search`` on the dataset's
*mean* sample (batch-level aggregate), restricted to tp=1, one stage per encoder and 4 LLM stages
so that 8 replicas each run a multimodal 1F1B pipeline. Each microbatch then gets its own stage
times from the same cost model (linear in tokens, mask entries, items and modality tokens, fitted
exactly per stage), and the planner's 1F1B schedule is replayed per replica with those durations
(``replay`` with per-microbatch callbacks). Iteration = slowest replica + its DP gradient
all-reduce. Memory is not checked for the larger, variable microbatches.

"hierarchical+profile" aims each replica's microbatch k at share k of the plan's load profile
(``profile_from_plan``: an LP over the 1F1B schedule, computed once per plan, its time printed
apart). Two limits of the plan are printed per workload, from each batch's per-replica mean
microbatch: the best any reshaping of microbatches can do (fluid microbatches, exact LP), and an
iteration with no bubble at all (busiest stage's work + its DP sync).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amylum.models.modality import AudioInputSpec, ImageInputSpec  # noqa: E402
from amylum.planner import microbatch as mbp  # noqa: E402
from amylum.planner.configs import EncoderInput, model_spec_from_configs  # noqa: E402
from amylum.planner.cost import CostModel, grad_needs  # noqa: E402
from amylum.planner.load_profile import pipeline_load_profile, profile_from_plan  # noqa: E402
from amylum.planner.presets import preset_configs  # noqa: E402
from amylum.planner.replay import replay  # noqa: E402
from amylum.planner.schedule import build_schedule  # noqa: E402
from amylum.planner.search import SearchOptions, search  # noqa: E402
from amylum.planner.simulate import stage_costs, stage_graph  # noqa: E402
from amylum.planner.spec import ClusterSpec, freeze  # noqa: E402
from amylum.planner.workload import Features, batch_stats, coefficients_from_preset, work_table  # noqa: E402

REPLICAS, MICROBATCHES, GLOBAL_BATCH = 8, 16, 4096
POLICY_ORDER = ("dataset_order", "random", "sorted_greedy", "lpt", "hierarchical", "hierarchical+profile")


# ----------------------------------------------------------------------------- workloads
def _text(rng, n, median):
    return np.clip(np.round(np.exp(rng.normal(math.log(median), 1.0, n))), 32, 4096)


def llava_like(n: int, rng, image: ImageInputSpec) -> Features:
    p = [0.22, 0.55, 0.09, 0.05, 0.03, 0.025, 0.015, 0.01, 0.01]  # 0..8 images, long tail
    imgs = rng.choice(len(p), n, p=p).astype(np.float64)
    t = image.num_tokens()
    return Features(_text(rng, n, 300), {"vision": imgs}, {"vision": imgs * t}, imgs * t * (t - 1) / 2)


def audio_visual(n: int, rng, image: ImageInputSpec, audio: AudioInputSpec) -> Features:
    imgs = rng.choice(5, n, p=[0.3, 0.35, 0.2, 0.1, 0.05]).astype(np.float64)
    has = rng.random(n) < 0.8
    secs = rng.uniform(1.0, 30.0, n)
    a_tok = np.array([audio.num_tokens(int(s * audio.sampling_rate)) if h else 0 for s, h in zip(secs, has)],
                     dtype=np.float64)
    t = image.num_tokens()
    seg = imgs * t * (t - 1) / 2 + a_tok * (a_tok - 1).clip(0) / 2
    return Features(_text(rng, n, 200), {"vision": imgs, "audio": has.astype(np.float64)},
                    {"vision": imgs * t, "audio": a_tok}, seg)


@dataclass
class Workload:
    name: str
    preset: str
    features: Features  # the "dataset"
    tokens_per_item: dict  # encoder tokens per item, as in the model (tile / padded window)
    scenario: str = "frozen_encoders"  # freezing scenario of planner.spec.freeze


# ----------------------------------------------------------------------------- static plan
def mean_sample_plan(w: Workload):
    """The planner's plan for the dataset's mean sample: one static plan for the batch aggregate."""
    llm_cfg, encs = preset_configs(w.preset)
    f = w.features
    enc_in = {}
    for b, e in encs.items():
        items = max(1, round(float(f.items[b].mean())))
        enc_in[b] = EncoderInput(e.config, items=items, tokens_per_item=w.tokens_per_item.get(b), merge=e.merge)
    model = freeze(model_spec_from_configs(w.preset, llm_cfg, enc_in, text_tokens=int(f.text_tokens.mean())),
                   w.scenario)
    gpus = REPLICAS * (4 + len(encs))
    cluster = ClusterSpec.of(gpus)
    opts = SearchOptions(tp_choices=(1,), mb_choices=(1,), llm_pp_choices=(4,), branch_pp_max=1,
                         placements=("modality_parallel",), checkpointing=(True,), simulate_top=2,
                         zero_bubble=False)  # the 1F1B pipeline this bench replays
    res = search(model, cluster, GLOBAL_BATCH, opts)
    if res.plan.dp != REPLICAS:
        raise RuntimeError(f"planner chose dp={res.plan.dp}, the bench needs {REPLICAS}")
    return res.plan, model, cluster


class StageTimes:
    """Per-microbatch F/B/W time of every stage: x · coef, x = [1, T, E, items_b…, tokens_b…].

    Fitted from the cost model on probe specs (exact: the cost model is linear in those
    variables, quadratic in one sample's length). A microbatch without items of a modality still
    runs that encoder on one dummy item (DESIGN §4.4), so its encoder cost is one item's.
    """

    def __init__(self, plan, w: Workload, cm: CostModel):
        llm_cfg, encs = preset_configs(w.preset)
        self.branches = list(encs)
        one = {b: EncoderInput(e.config, items=1, tokens_per_item=w.tokens_per_item.get(b), merge=e.merge)
               for b, e in encs.items()}
        probes = [freeze(model_spec_from_configs(w.preset, llm_cfg, one, text_tokens=t), w.scenario)
                  for t in (256, 1024, 4096)]
        needs = [grad_needs(p) for p in probes]
        by_name = [{l.name: l for l in p.all_layers()} for p in probes]
        seq = np.array([p.llm[0].tokens for p in probes], dtype=np.float64)
        nb = len(self.branches)
        self.item_tokens = {b: by_name[0][f"{b}.projector"].tokens for b in self.branches}
        self.coef: dict[int, np.ndarray] = {}  # stage → (3 ops, 3 + 2·nb)
        self.out_per_unit: dict[int, tuple[int, float]] = {}  # stage → (variable column, bytes per unit)
        for st in plan.stages:
            c = np.zeros((3, 3 + 2 * nb))
            groups: dict[str, list[str]] = {}
            for n in st.layers:
                groups.setdefault(by_name[0][n].module, []).append(n)
            for module, names in groups.items():
                def cost(i, mb=1):
                    sc = cm.stage_cost([by_name[i][n] for n in names], needs[i], mb, st.tp)
                    return np.array([sc.f, sc.b, sc.w])
                if module == "llm":
                    ys = np.stack([cost(i) for i in range(3)])  # (3 probes, 3 ops)
                    sol = np.linalg.solve(np.vander(seq, 3), ys)  # rows c2, c1, c0
                    c[:, 0] += sol[2]
                    c[:, 1] += sol[1]
                    c[:, 2] += 2 * sol[0]  # cost model counts seq²/2 causal pairs
                else:
                    b, kind = module.split(".")
                    j = self.branches.index(b)
                    y1, y2 = cost(0, 1), cost(0, 2)
                    c[:, 0] += 2 * y1 - y2
                    if kind == "encoder":
                        c[:, 3 + j] += y2 - y1
                    else:
                        c[:, 3 + nb + j] += (y2 - y1) / self.item_tokens[b]
            self.coef[st.id] = c
            last = by_name[0][st.layers[-1]]
            if last.module == "llm":
                col, per = 1, last.out_bytes / last.tokens
            else:
                b, kind = last.module.split(".")
                j = self.branches.index(b)
                col, per = (3 + j, last.out_bytes) if kind == "encoder" else (3 + nb + j, last.out_bytes / last.tokens)
            self.out_per_unit[st.id] = (col, per)

    def variables(self, f: Features, idx: np.ndarray) -> np.ndarray:
        x = [1.0, f.llm_tokens[idx].sum(), f.mask_entries()[idx].sum()]
        items = [max(1.0, f.items[b][idx].sum()) for b in self.branches]
        toks = [f.tokens[b][idx].sum() if f.items[b][idx].sum() > 0 else float(self.item_tokens[b])
                for b in self.branches]
        return np.array(x + items + toks)


def replay_iteration(plan, st: StageTimes, cm: CostModel, xs: list[np.ndarray], sched, sync: dict) -> float:
    """One replica's 1F1B with per-microbatch durations; the planner's replay() asks durations by
    (stage, op) in each stage's action order, so per-stage queues in that order supply them."""
    ops = {"F": 0, "B": 1, "W": 2}
    dur_q, xfer_q = {}, {}
    for s, acts in sched.items():
        d = []
        for a in acts:
            if a.op in ops:
                t = float(xs[a.mb] @ st.coef[s][ops[a.op]])
                if a.op == "B" and not plan.split_w:
                    t += float(xs[a.mb] @ st.coef[s][2])  # W is folded into B without split_w
                d.append(t)
        dur_q[s] = iter(d)
        x = []
        for a in acts:
            if a.op == "SEND":
                src_for_bytes = s if a.data == "act" else a.peer  # grads have the activation's shape
                col, per = st.out_per_unit[src_for_bytes]
                inter = plan.stage(s).ranks[0][0] // cm.cluster.gpus_per_node != \
                    plan.stage(a.peer).ranks[0][0] // cm.cluster.gpus_per_node
                x.append(cm.p2p_time(xs[a.mb][col] * per / plan.stage(s).tp, inter))
        xfer_q[s] = iter(x)
    tr = replay(sched, lambda s, op: next(dur_q[s]), lambda s, p, data: next(xfer_q[s]))
    if not tr.ok:
        raise RuntimeError(f"replay failed: {tr.stuck or tr.errors}")
    return max(tr.end[s] + sync[s] for s in tr.end)


def fluid_bounds(plan, st: StageTimes, cm: CostModel, sched, sync: dict, xbar: np.ndarray) -> tuple[float, float]:
    """Two limits for one replica whose microbatches average ``xbar``, whatever the assignment:

    - best shaped: every microbatch a scaled copy of the mean (fluid, any share in [0.25, 1.5]),
      shaped by the exact LP of ``pipeline_load_profile``, replayed;
    - no bubble: the busiest stage's own work plus its DP sync (no fill, drain or waiting).
    """
    ops = {"F": 0, "B": 1, "W": 2}

    def coef(s, op):
        c = st.coef[s][ops[op]]
        return c + st.coef[s][2] if op == "B" and not plan.split_w else c

    def op_time(s, op):
        c = coef(s, op)
        return float(c[0]), float(c @ xbar - c[0])

    node = cm.cluster.gpus_per_node

    def transfer_time(s, peer, data):
        col, per = st.out_per_unit[s if data == "act" else peer]
        inter = plan.stage(s).ranks[0][0] // node != plan.stage(peer).ranks[0][0] // node
        fixed = cm.p2p_time(0.0, inter)
        return fixed, cm.p2p_time(xbar[col] * per / plan.stage(s).tp, inter) - fixed

    shares = pipeline_load_profile(sched, op_time, transfer_time, {s: 0 for s in sched}, 1, MICROBATCHES,
                                   sync=sync)[:, 0]
    xs = [np.r_[1.0, xbar[1:] * p] for p in shares]
    shaped = replay_iteration(plan, st, cm, xs, sched, sync)
    busy = max(sum(float(coef(s, a.op) @ xbar) for a in acts if a.op in ops) + sync[s] for s, acts in sched.items())
    return shaped, busy


# ----------------------------------------------------------------------------- run
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4, help="global batches per workload (averaged)")
    ap.add_argument("--dataset", type=int, default=100, help="dataset size in global batches (batch stats)")
    ap.add_argument("--repeats", type=int, default=7, help="timing repeats of each assignment (min reported)")
    ap.add_argument("--quick", action="store_true", help="smaller dataset, fewer repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenario", default="frozen_encoders",
                    help="freezing: frozen_encoders | all_trainable | projector_only")
    args = ap.parse_args()
    if args.quick:
        args.dataset, args.repeats = 8, 2
    rng = np.random.default_rng(args.seed)
    n = args.dataset * GLOBAL_BATCH
    pix = ImageInputSpec(image_size=1024, tokens_per_item=2304)
    sig = ImageInputSpec(image_size=384, tokens_per_item=729)
    aud = AudioInputSpec()
    workloads = [
        Workload("llava-like", "VLM-small", llava_like(n, rng, pix), {"vision": 2304}, args.scenario),
        Workload("audio-visual", "VALM-small", audio_visual(n, rng, sig, aud), {"vision": 729}, args.scenario),
    ]
    for w in workloads:
        coef = coefficients_from_preset(w.preset, scenario=w.scenario, tokens_per_item=w.tokens_per_item)
        table = work_table(w.features, coef)
        stats = batch_stats(table, GLOBAL_BATCH, seed=args.seed)
        print(f"\n== {w.name} on {w.preset} ({w.scenario}): {len(table):,} samples, {stats.batches} global batches of "
              f"{GLOBAL_BATCH}")
        print(stats.table())
        plan, _model, cluster = mean_sample_plan(w)
        cm = CostModel(cluster, checkpointing=plan.checkpointing)
        st = StageTimes(plan, w, cm)
        costs = stage_costs(plan, _model, cm)
        sync = {s: cm.dp_sync_time(c, plan.dp, plan.stage(s).tp) for s, c in costs.items()}
        sched = build_schedule(stage_graph(plan, costs), MICROBATCHES, plan.schedule, plan.split_w)
        print(f"plan: {len(plan.stages)} stages/replica "
              f"({', '.join(f'{s.chain}:{len(s.layers)}L' for s in plan.stages)}), dp={plan.dp}, "
              f"{plan.world_size} GPUs, checkpointing={plan.checkpointing}")
        t0 = time.perf_counter()
        profile = profile_from_plan(plan, _model, cluster, MICROBATCHES, (*table.modalities, "llm"))
        lp_ms = (time.perf_counter() - t0) * 1e3
        print(f"load profile ({lp_ms:.0f} ms, once per plan): " + " ".join(f"{x:.2f}" for x in profile[:, -1]))
        policies = {name: mbp.get_policy(name) for name in POLICY_ORDER if name in mbp.POLICIES}
        policies["hierarchical+profile"] = lambda t, r, m, seed=0: mbp.hierarchical(t, r, m, seed, profile=profile)
        perm = np.random.default_rng(args.seed + 1).permutation(len(table))
        rows = {p: {"cv_enc": [], "cv_llm": [], "ms": [], "iter": []} for p in POLICY_ORDER}
        deviation = {"encoder": [], "llm": []}
        bounds = {"shaped": [], "busy": []}
        for bi in range(args.batches):
            pos = perm[bi * GLOBAL_BATCH:(bi + 1) * GLOBAL_BATCH]
            sub, subf = table.take(pos), w.features.take(pos)
            for name in POLICY_ORDER:
                pol = policies[name]
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    a = pol(sub, REPLICAS, MICROBATCHES, seed=args.seed + bi)
                    times.append(time.perf_counter() - t0)
                mbp.check_assignment(a, len(sub), REPLICAS, MICROBATCHES)
                bal = mbp.balance(sub, a)
                if name == "hierarchical":  # the limits of this batch, from its per-replica mean microbatch
                    lim = [fluid_bounds(plan, st, cm, sched, sync,
                                        np.mean([st.variables(subf, idx) for idx in mbs], axis=0)) for mbs in a]
                    bounds["shaped"].append(max(x for x, _ in lim))
                    bounds["busy"].append(max(y for _, y in lim))
                if name == "hierarchical+profile":
                    for k, v in mbp.profile_deviation(sub, a, profile).items():
                        deviation[k].append(v)
                it = max(replay_iteration(plan, st, cm, [st.variables(subf, idx) for idx in mbs], sched, sync)
                         for mbs in a)
                r = rows[name]
                r["cv_enc"].append(bal["encoder"])
                r["cv_llm"].append(bal["llm"])
                r["ms"].append(min(times) * 1e3)
                r["iter"].append(it)
        base = {k: statistics.mean(rows["random"][k]) for k in ("cv_enc", "cv_llm", "iter")}
        print(f"{'policy':<21} {'CV enc':>8} {'CV llm':>8} {'enc ×':>7} {'llm ×':>7} {'iter s':>8} "
              f"{'speedup':>8} {'assign ms':>10}")
        for name in POLICY_ORDER:
            r = {k: statistics.mean(v) for k, v in rows[name].items()}
            ratio = lambda b, x: b / x if x > 0 else float("inf")  # noqa: E731
            line = (f"{name:<21} {r['cv_enc']:>8.4f} {r['cv_llm']:>8.4f} {ratio(base['cv_enc'], r['cv_enc']):>6.1f}x "
                    f"{ratio(base['cv_llm'], r['cv_llm']):>6.1f}x {r['iter']:>8.3f} "
                    f"{base['iter'] / r['iter']:>7.3f}x {max(rows[name]['ms']):>10.1f}")
            print(line)
        rnd = (base["cv_enc"], base["cv_llm"])
        dev = (statistics.mean(deviation["encoder"]), statistics.mean(deviation["llm"]))
        print(f"hierarchical+profile against its profile: CV enc {dev[0]:.4f} ({rnd[0] / dev[0]:.1f}x below random's "
              f"CV), CV llm {dev[1]:.4f} ({rnd[1] / dev[1]:.1f}x)")
        shaped, busy = statistics.mean(bounds["shaped"]), statistics.mean(bounds["busy"])
        print(f"limits of this plan: best-shaped fluid microbatches {shaped:.3f} s ({base['iter'] / shaped:.3f}x); "
              f"no bubble at all {busy:.3f} s ({base['iter'] / busy:.3f}x)")
    print(f"\n(ratios and speedup against random; CV over all {REPLICAS}x{MICROBATCHES} microbatches, mean of "
          f"{args.batches} global batches; assign ms = worst batch's best of {args.repeats} runs)")


if __name__ == "__main__":
    main()
