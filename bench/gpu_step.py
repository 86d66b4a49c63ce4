"""One training step on one GPU: amylum's path vs a plain HuggingFace loop, same run, same data.

    python bench/gpu_step.py                  # VLM preset (SigLIP-so400m frozen + MLP + Qwen2-1.5B), batch 4
    python bench/gpu_step.py --preset valm    # Whisper-small + SigLIP-so400m + Mistral-7B (frozen LLM)
    python bench/gpu_step.py --cpu-smoke      # tiny preset on CPU: checks the script runs
    python bench/gpu_step.py --backend flex-flash --graph --extra-backend flex-flash+eager
                                              # the step as one CUDA graph, and without, same run

Rows:
  hf-loop          encoder under no_grad, llm(inputs_embeds=…, labels=…), SDPA (causal), bf16 weights, fused AdamW
  amylum-causal    amylum's path with the plain causal mask (for the loss-agreement check with hf-loop)
  amylum           amylum's path with the multimodal mask (bidirectional inside each image): the target row
Model FLOPs per step = 6·P_llm·T + 2·P_enc·T_enc for trainable LLM (2·P_llm·T + 4·P_llm·T backward
through a frozen LLM's activations counts as 4·P_llm·T: input gradients only); MFU is against the
measured bf16 matmul rate of this card.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amylum.attention import resolve_backend  # noqa: E402
from amylum.data.batch import IGNORE_INDEX, MultimodalBatch  # noqa: E402
from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset  # noqa: E402
from amylum.parallel.blocks import compile_blocks  # noqa: E402
from amylum.runtime.adamw_triton import TritonAdamW  # noqa: E402
from amylum.runtime.graph_step import GraphedTrainStep  # noqa: E402

PRESETS = {
    # name: (preset, rows, prompt tokens, text tokens, images per row, audio seconds per row, train llm)
    "vlm": ("siglip-so400m+qwen2-1.5b", 4, 16, 1024, 1, 0.0, True),
    "valm": ("whisper-small+siglip-so400m+mistral-7b", 2, 16, 512, 1, 30.0, False),
    "tiny": ("tiny-valm", 2, 4, 24, 1, 1.0, True),
}


@dataclass
class Shape:
    rows: int
    prompt: int
    text: int
    images: int
    audio_seconds: float


def make_batch(model, shape: Shape, vocab: int, seed: int) -> MultimodalBatch:
    """rows × [prompt | image(s) | audio | answer text]; loss on the answer text only."""
    g = torch.Generator().manual_seed(seed)
    specs = model.modality_specs()
    modalities = tuple(specs)
    parts_tokens, inputs, item_tokens, item_records = [], {}, {m: [] for m in modalities}, {m: [] for m in modalities}
    for name, spec in specs.items():
        if spec.kind == "image" and shape.images:
            n = spec.num_tokens()
            inputs[name] = {spec.input_name: torch.randn(shape.rows * shape.images, spec.num_channels, spec.image_size, spec.image_size, generator=g)}
            parts_tokens.append((name, [n] * shape.images))
        elif spec.kind == "audio" and shape.audio_seconds:
            n = spec.num_tokens(int(shape.audio_seconds * spec.sampling_rate))
            inputs[name] = {spec.input_name: torch.randn(shape.rows, spec.n_mels, spec.max_frames, generator=g)}
            parts_tokens.append((name, [n]))
    cols = {k: [] for k in ("input_ids", "labels", "position_ids", "sample_ids", "segment_ids", "kinds")}
    for r in range(shape.rows):
        ids = torch.randint(3, vocab, (shape.prompt + shape.text,), generator=g).tolist()
        row = {k: [] for k in cols}
        seg = 0

        def add(tok, label, kind, segment):
            row["input_ids"].append(tok)
            row["labels"].append(label)
            row["position_ids"].append(len(row["position_ids"]))
            row["sample_ids"].append(0)
            row["segment_ids"].append(segment)
            row["kinds"].append(kind)

        for t in ids[: shape.prompt]:
            add(t, IGNORE_INDEX, 0, -1)
        for name, counts in parts_tokens:
            kind = modalities.index(name) + 1
            for n in counts:
                for _ in range(n):
                    add(0, IGNORE_INDEX, kind, seg)
                seg += 1
                item_tokens[name].append(n)
                item_records[name].append(f"row{r}")
        for t in ids[shape.prompt :]:
            add(t, t, 0, -1)
        for k in cols:
            cols[k].append(row[k])
    tensors = {k: torch.tensor(v) for k, v in cols.items()}
    return MultimodalBatch(
        **tensors, modalities=modalities, encoder_inputs=inputs,
        item_tokens={k: v for k, v in item_tokens.items() if v}, item_records={k: v for k, v in item_records.items() if v},
        records=[[f"row{r}"] for r in range(shape.rows)],
    )


def matmul_rate(device: str) -> float:
    if device != "cuda":
        return float("nan")
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def kernel_time(prof, steps: int, keep: Path | None = None) -> tuple[float, float, list[tuple[str, float, float]]]:
    """Kernel ms per step, the busy fraction of the span, and the top kernels (name, ms per step,
    launches per step), from the trace's kernel records (the profiler's per-event device times
    also count launch records and overlap). A profile exports its trace once: ``keep`` also
    writes it there."""
    import json
    import shutil
    import tempfile
    from collections import defaultdict

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
        if keep is not None:
            shutil.copyfile(f.name, keep)
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy")]
    total = sum(e["dur"] for e in kernels)
    span = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in kernels:
        entry = by_name[e.get("name", "?")[:160]]
        entry[0] += e["dur"] / 1e3 / steps
        entry[1] += 1 / steps
    top = sorted(((name, ms, n) for name, (ms, n) in by_name.items()), key=lambda t: -t[1])
    return total / 1e3 / steps, total / span, top


# Kernel families by name, first match wins: where a step's GPU time goes, at a glance.
KERNEL_FAMILIES = (
    ("memset", ("Memset",)), ("copy", ("Memcpy",)),
    ("attention bwd", ("flash_bwd", "FlashAttentionBackward", "attention_backward", "flash_attncuteflash_bwd")),
    ("attention", ("flash", "attention", "fmha")),
    ("optimizer", ("adamw", "multi_tensor_apply")),
    ("matmul", ("nvjet", "gemm", "xmma", "cutlass", "splitK")),
    ("compiled (triton)", ("triton_",)),
)


def kernel_family(name: str) -> str:
    return next((f for f, keys in KERNEL_FAMILIES if any(k.lower() in name.lower() for k in keys)), "other")


def kernel_families(top: list[tuple[str, float, float]]) -> dict[str, tuple[float, float]]:
    """(ms per step, launches per step) by family of ``kernel_time``'s per-name list."""
    out: dict[str, list[float]] = {}
    for name, ms, n in top:
        entry = out.setdefault(kernel_family(name), [0.0, 0.0])
        entry[0] += ms
        entry[1] += n
    return {f: (ms, n) for f, (ms, n) in sorted(out.items(), key=lambda kv: -kv[1][0])}


def _option_value(text: str):
    """An inductor option's value from the command line: true/false, an integer, or the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return int(text) if text.lstrip("-").isdigit() else text


def op_table(model, batch, rows: int, label: str) -> None:
    """One eager forward + backward under the profiler: the aten ops by GPU time, with their input
    shapes (which op launched which kernel; a CUDA-graph replay shows kernels only)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        model(batch).loss.backward()
        torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    ops = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    ops.sort(key=lambda e: -e.self_device_time_total)
    print(f"{label}: aten ops of one eager step by GPU time (self), with input shapes:")
    for e in ops[:rows]:
        print(f"    {e.self_device_time_total / 1e3:7.2f} ms {e.count:5d}×  {e.key:<28} {str(e.input_shapes)[:150]}")


def build(preset: str, device: str, dtype, backend: str, mask_mode: str, train_llm: bool, seed: int):
    model = build_preset(preset, device=device, dtype=dtype, attention_backend=backend, mask_mode=mask_mode, seed=seed)
    freeze = {m: BranchFreeze("frozen", "trainable") for m in model.encoders}
    apply_freeze(model, FreezeSpec(llm="trainable" if train_llm else "frozen", encoders=freeze))
    return model


def hf_loop_step(model, batch: MultimodalBatch):
    """What a user writes with HF alone: encoders under no_grad, concatenate, llm(labels=…)."""
    embeds = model.llm.get_input_embeddings()(batch.input_ids.masked_fill(batch.kinds > 0, 0))
    pieces = []
    for i, name in enumerate(batch.modalities):
        branch = model.encoders[name]
        with torch.no_grad():
            feats = branch.encode(**batch.encoder_inputs[name])
        proj = branch.projector(feats)
        n = batch.item_tokens[name][0]
        pieces.append((i + 1, proj[:, :n]))
    # scatter by position (all rows share one layout in this benchmark)
    flat = embeds.clone()
    for kind, feats in pieces:
        pos = (batch.kinds[0] == kind).nonzero().squeeze(1)
        per_row = feats.reshape(batch.input_ids.shape[0], -1, feats.shape[-1])
        flat[:, pos] = per_row.to(flat.dtype)
    return model.llm(inputs_embeds=flat, position_ids=batch.position_ids, labels=batch.labels, use_cache=False).loss


def run_row(label, args, shape, vocab, backend, mask_mode, amylum_path, rate, graph=False, optimizer="fused",
            merge=False, prune=True, row_options=()):
    preset, *_rest, train_llm = PRESETS[args.preset]
    device, dtype = ("cpu", torch.float32) if args.cpu_smoke else ("cuda", torch.bfloat16)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(preset, device, dtype, backend, mask_mode, train_llm, args.seed)
    if amylum_path:
        model.validate_inputs = False
        model.last_block_targets_only = prune  # the last block's MLP on the loss's rows only (models/target_rows.py)
        if not args.no_compile:
            options = dict(kv.split("=", 1) for kv in (*args.compile_option, *row_options))
            options = {k: _option_value(v) for k, v in options.items()}
            compile_blocks(model, frozen_graphs=args.frozen_graph, merge_matmuls=merge,
                           **({"mode": args.compile_mode} if args.compile_mode else {}),
                           **({"options": options} if options else {}))
        if args.loss_chunk:
            model.loss_chunk_size = args.loss_chunk
    params = model.trainable_parameters()
    if optimizer == "triton":  # same update, one Triton launch (amylum.runtime.adamw_triton)
        opt = TritonAdamW(params, lr=1e-5)
    else:
        opt = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda", **({"capturable": True} if graph else {}))
    cpu_batch = make_batch(model, shape, vocab, args.seed)
    batch = cpu_batch.to(device, non_blocking=device == "cuda")
    losses = []
    # The whole step as one CUDA graph (amylum.runtime.graph_step): warm-up steps run eagerly,
    # the next one is captured; every call is one training step either way.
    graphed = GraphedTrainStep(lambda b: model(b).loss, opt, warmup=min(3, args.warmup)) if graph else None

    def step():
        if graphed is not None:
            losses.append(graphed(batch))
            return
        loss = model(batch).loss if amylum_path else hf_loop_step(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    t_compile = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t_compile = time.perf_counter() - t_compile
    start = time.perf_counter()
    if device == "cuda":
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        e1.record()
        torch.cuda.synchronize()
        ms = e0.elapsed_time(e1) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30
        if args.kernel_time and amylum_path:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            k_ms, busy, top = kernel_time(prof, 3)
            memsets = sum(n for name, _, n in top if name.startswith("Memset"))
            copies = sum(n for name, _, n in top if name.startswith("Memcpy"))
            print(f"{label}: GPU work {k_ms:.1f} ms/step ({sum(n for _, _, n in top):.0f} kernels, memsets and "
                  f"copies per step, {memsets:.0f} memsets, {copies:.0f} copies), busy {busy:.0%} of the profiled "
                  "span; largest:", flush=True)
            print("  by family: " + ", ".join(f"{f} {ms:.1f} ms ({n:.0f})" for f, (ms, n) in kernel_families(top).items()))
            for name, k, n in top[:args.kernel_time]:
                print(f"    {k:7.2f} ms {n:5.0f}×  {name}", flush=True)
            if args.kernel_list:
                with open(args.kernel_list, "a") as f:
                    f.write(f"# {label}: GPU work {k_ms:.2f} ms/step\n")
                    f.writelines(f"{k:9.4f} ms {n:6.1f}×  {kernel_family(name):<18} {name}\n" for name, k, n in top)
        if args.op_table and amylum_path and not graph:
            op_table(model, batch, args.op_table, label)
    else:
        ms = (time.perf_counter() - start) * 1000 / args.steps
        peak = float("nan")
    counts = model.parameter_counts()
    tokens = int((cpu_batch.sample_ids >= 0).sum())
    enc_tokens = {m: cpu_batch.num_items(m) for m in cpu_batch.modalities}
    p_llm = counts["llm"]
    flops = (6 if train_llm else 4) * p_llm * tokens
    for m, n_items in enc_tokens.items():
        spec = model.modality_specs()[m]
        # encoder tokens actually computed: images' patch grid; audio: the full padded window
        enc_seq = spec.tokens_per_item if spec.kind == "image" else spec.max_tokens * 1
        flops += 2 * counts[f"{m}.encoder"] * n_items * enc_seq
    tflops = flops / (ms / 1000) / 1e12
    result = dict(
        label=label, ms=ms, tok_s=tokens / (ms / 1000), tflops=tflops, mfu=tflops / rate if rate == rate else float("nan"),
        peak=peak, compile_s=t_compile, losses=[float(x) for x in torch.stack(losses).float().cpu()],
    )
    del model, opt, batch, params
    gc.collect()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="vlm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="fast", help="amylum attention backend for the target row")
    ap.add_argument("--extra-backend", action="append", default=[],
                    help="also time the multimodal row with this attention backend (repeatable), e.g. flex; "
                         "suffixes +graph / +eager, +triton / +fused, +merge / +nomerge and +prune / +noprune "
                         "override --graph, --optimizer, --merge-matmuls and --no-prune for that row; "
                         "+opt:KEY=VALUE adds (or overrides) an inductor option for that row's blocks")
    ap.add_argument("--merge-matmuls", action="store_true",
                    help="amylum rows: merge matmuls sharing an input in the compiled blocks (parallel/gemm_merge.py)")
    ap.add_argument("--loss-chunk", type=int, default=0, help="amylum rows: the fused loss's chunk (default: the model's)")
    ap.add_argument("--optimizer", choices=("fused", "triton"), default="fused",
                    help="amylum rows' AdamW: torch's fused kernel, or amylum's one-launch Triton kernel")
    ap.add_argument("--graph", action="store_true",
                    help="amylum rows replay the whole step as one CUDA graph (amylum.runtime.graph_step)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-prune", action="store_true",
                    help="amylum rows: the last block's MLP runs on every row (default: on the loss's rows only)")
    ap.add_argument("--frozen-graph", action="store_true",
                    help="compile a frozen encoder whole as one CUDA graph (amylum.parallel.blocks.compile_blocks)")
    ap.add_argument("--compile-option", action="append", default=[], metavar="KEY=VALUE",
                    help="inductor option for the amylum rows' blocks (repeatable), e.g. coordinate_descent_tuning=true")
    ap.add_argument("--compile-mode", help="torch.compile mode for the blocks, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--kernel-time", type=int, default=0, metavar="N",
                    help="after timing each amylum row, profile 3 steps: GPU time per step and its N largest kernels")
    ap.add_argument("--op-table", type=int, default=0, metavar="N",
                    help="non-graph amylum rows: profile one eager step and print its N costliest aten ops with shapes")
    ap.add_argument("--kernel-list", metavar="PATH",
                    help="with --kernel-time: append every kernel of each profiled row (ms and launches per step) to PATH")
    ap.add_argument("--skip-causal", action="store_true", help="skip the loss-agreement row")
    ap.add_argument("--cpu-smoke", action="store_true")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.preset, args.steps, args.warmup, args.no_compile = "tiny", 2, 1, True
        args.backend = "reference"
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: use --cpu-smoke on a machine without a GPU")
    preset, rows, prompt, text, images, audio_s, train_llm = PRESETS[args.preset]
    shape = Shape(rows, prompt, text, images, audio_s)
    vocab = 64 if args.cpu_smoke else 32000
    device = "cpu" if args.cpu_smoke else "cuda"
    rate = matmul_rate(device)
    print(f"# {preset}; batch {rows} × ({text + prompt} text + modality tokens); "
          f"{'trainable' if train_llm else 'frozen'} LLM; device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}; bf16 matmul {rate:.0f} TFLOP/s; amylum attention {args.backend!r} = "
          f"{resolve_backend(args.backend)!r}", flush=True)
    if (args.graph or args.optimizer == "triton") and args.cpu_smoke:
        sys.exit("--graph and --optimizer triton need CUDA")
    def row_tag(graph, optimizer, merge, prune):
        return "+".join(t for t, on in (("graph", graph), ("triton", optimizer == "triton"), ("merge", merge),
                                        ("noprune", not prune)) if on)

    main = (args.graph, args.optimizer, args.merge_matmuls, not args.no_prune)
    tag = f" [{row_tag(*main)}]" if row_tag(*main) else ""
    variants = [("hf-loop", "hf", "causal", False, (False, "fused", False, False, ()))]
    if not args.skip_causal:
        variants.append((f"amylum-causal{tag}", args.backend, "causal", True, (*main, ())))
    variants.append((f"amylum{tag}", args.backend, "multimodal", True, (*main, ())))
    for extra in args.extra_backend:
        name, *flags = extra.split("+")
        known = {"graph", "eager", "triton", "fused", "merge", "nomerge", "prune", "noprune"}
        row_options = tuple(f[len("opt:"):] for f in flags if f.startswith("opt:"))
        if any("=" not in o for o in row_options):
            sys.exit(f"--extra-backend {extra!r}: an +opt: suffix needs KEY=VALUE")
        flags = [f for f in flags if not f.startswith("opt:")]
        unknown = set(flags) - known
        if unknown:
            sys.exit(f"--extra-backend {extra!r}: unknown suffix {sorted(unknown)} ({', '.join(sorted(known))})")
        graph = "graph" in flags or ("eager" not in flags and args.graph)
        optimizer = "triton" if "triton" in flags else "fused" if "fused" in flags else args.optimizer
        merge = "merge" in flags or ("nomerge" not in flags and args.merge_matmuls)
        prune = "prune" in flags or ("noprune" not in flags and not args.no_prune)
        tag = "+".join(t for t in (row_tag(graph, optimizer, merge, prune), *row_options) if t)
        variants.append((f"amylum [{name}{'+' + tag if tag else ''}]", name, "multimodal", True,
                         (graph, optimizer, merge, prune, row_options)))
    results = []
    for label, backend, mask_mode, amylum_path, (graph, optimizer, merge, prune, row_options) in variants:
        try:
            results.append(run_row(label, args, shape, vocab, backend, mask_mode, amylum_path, rate, graph, optimizer,
                                   merge, prune, row_options))
        except Exception as exc:  # one failing variant must not cost the others' measurements
            if not results:
                raise
            print(f"row {label!r} failed: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
            gc.collect()
    base = results[0]
    print(f"{'path':<40} {'ms/step':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>8} {'vs hf':>6} {'warmup s':>8}")
    for r in results:
        print(f"{r['label']:<40} {r['ms']:8.1f} {r['tok_s']:9.0f} {r['tflops']:8.1f} {r['mfu']:6.1%} {r['peak']:8.1f} "
              f"{base['ms'] / r['ms']:5.2f}× {r['compile_s']:8.1f}")
    causal = [r for r in results if r["label"].startswith("amylum-causal")]
    if causal:
        n = min(len(base["losses"]), len(causal[0]["losses"]))  # profiled steps come after the timed ones
        a, b = torch.tensor(base["losses"][:n]), torch.tensor(causal[0]["losses"][:n])
        rel = ((a - b).abs() / a.abs()).max().item()
        print(f"loss agreement hf-loop vs amylum-causal over {len(a)} steps: max relative difference {rel:.2e}")
        print("losses hf:", " ".join(f"{x:.4f}" for x in a.tolist()))
        print("losses am:", " ".join(f"{x:.4f}" for x in b.tolist()))
    if math.isnan(rate):
        print("(CPU smoke run: no MFU)")


if __name__ == "__main__":
    main()
