"""Where does amylum's single-GPU step spend its time? Variants of bench/gpu_step.py's amylum row + a profile.

    python bench/gpu_profile.py            # H100: variant timings, then the top CUDA kernels of the default path
    python bench/gpu_profile.py --no-profile   # variant timings only
    python bench/gpu_profile.py --only=default --only=chunk   # the variants whose names contain these
    python bench/gpu_profile.py --only=default --table-out=prof.txt   # also every kernel, and a chrome trace
    python bench/gpu_profile.py --only=flex-flash --profile=flex-flash   # profile that variant, not the default
    (the flex-flash variants need the flash-attn-4 package; a variant that fails is reported and skipped)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_step import PRESETS, Shape, build, kernel_time, make_batch  # noqa: E402
from amylum.parallel.blocks import compile_blocks  # noqa: E402


def setup(backend="fast", compile_=True, chunk=2048, compile_kwargs=None, compile_opt=False):
    preset, rows, prompt, text, images, audio_s, train_llm = PRESETS["vlm"]
    model = build(preset, "cuda", torch.bfloat16, backend, "multimodal", train_llm, 0)
    model.validate_inputs = False
    model.loss_chunk_size = chunk
    if compile_:
        compile_blocks(model, **(compile_kwargs or {}))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, fused=not compile_opt)
    opt_step = torch.compile(opt.step) if compile_opt else opt.step
    batch = make_batch(model, Shape(rows, prompt, text, images, audio_s), 32000, 0).to("cuda", non_blocking=True)

    graphs = "reduce-overhead" in (compile_kwargs or {}).get("mode", "")

    def step():
        if graphs:  # CUDA-graph trees: a new step may reuse the previous step's static buffers
            torch.compiler.cudagraph_mark_step_begin()
        model(batch).loss.backward()
        opt_step()
        opt.zero_grad(set_to_none=True)

    return model, step


def timed(step, n=10, warm=4):
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1000 / n


def _no_kv_expansion():
    """The variant without the GQA K/V expansion (amylum.attention.backends)."""
    import amylum.attention.backends as backends

    saved = backends.EXPAND_KV_BELOW_PROGRAMS_PER_SM
    backends.EXPAND_KV_BELOW_PROGRAMS_PER_SM = 0.0
    return lambda: setattr(backends, "EXPAND_KV_BELOW_PROGRAMS_PER_SM", saved)


def _flex_tiles(**options):
    """A variant whose FlexAttention calls get these tile options (fwd_*/bwd_* kernel_options)."""
    def before():
        import amylum.attention.backends as backends

        saved = backends.run_flex

        def run_flex(*args, kernel_options=None, **kw):
            return saved(*args, kernel_options={**options, **(kernel_options or {})}, **kw)

        backends.run_flex = run_flex
        return lambda: setattr(backends, "run_flex", saved)

    return before


def _device_mask():
    """The variant that builds and validates the attention mask on the device (before session 4)."""
    import amylum.attention.integration as integration

    saved = integration._host_mask_spec
    integration._host_mask_spec = lambda batch, mode: None
    return lambda: setattr(integration, "_host_mask_spec", saved)


def sync_report(step) -> None:
    """Run one step with CUDA's sync debug mode and print where the host waits for the device."""
    import traceback
    import warnings

    seen: dict[str, int] = {}

    def show(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and "warnings" not in f.filename][-4:]
        if frames and frames[-1].name == "sync_report":
            return  # raised by switching the debug mode itself, not by the step
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
        seen[where] = seen.get(where, 0) + 1

    saved = warnings.showwarning
    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            step()
            torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = saved
    print(f"\nhost-device syncs in one step: {sum(seen.values())}")
    for where, n in seen.items():
        print(f"  {n} × {where}")


FWD_64 = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3}
BWD_32_64 = {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32,
             "bwd_num_warps": 4, "bwd_num_stages": 3}


def main():
    # name: (setup keywords, a function that changes the library for the variant and returns its undo)
    variants = {
        "default (fast attention, compiled blocks, chunk 2048)": ({}, None),
        "no GQA K/V expansion": ({}, _no_kv_expansion),
        "mask built on the device (syncs)": ({}, _device_mask),
        "loss chunk 4096": ({"chunk": 4096}, None),
        "loss chunk 8192": ({"chunk": 8192}, None),
        "blocks as CUDA graphs (reduce-overhead)": ({"compile_kwargs": {"mode": "reduce-overhead"}}, None),
        "compiled optimizer step (torch AdamW)": ({"compile_opt": True}, None),
        "flex tiles fwd 64x64 w4 s3": ({}, _flex_tiles(**FWD_64)),
        "flex tiles bwd 32/64/64/32 w4 s3": ({}, _flex_tiles(**BWD_32_64)),
        "flex, Triton kernels": ({"backend": "flex"}, None),
        "flex-flash, FA4 kernels": ({"backend": "flex-flash"}, None),
        "flex-flash + blocks as CUDA graphs": ({"backend": "flex-flash", "compile_kwargs": {"mode": "reduce-overhead"}}, None),
        "frozen encoder compiled whole as one CUDA graph": ({"compile_kwargs": {"frozen_graphs": True}}, None),
        "coordinate-descent tuning of the LLM blocks' kernels": (
            {"compile_kwargs": {"options": {"coordinate_descent_tuning": True}}}, None),
    }
    only = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")]
    for name, (kw, before) in variants.items():
        if only and not any(o in name for o in only):
            continue
        undo = None
        try:
            undo = before() if before else None
            torch.cuda.reset_peak_memory_stats()
            model, step = setup(**kw)
            ms = timed(step)
            print(f"{name:<40} {ms:7.1f} ms/step  peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB", flush=True)
            del model, step
        except Exception as e:  # a variant that fails is reported, not fatal
            print(f"{name:<40} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            if undo:
                undo()
            torch._dynamo.reset()  # the next variant compiles its own blocks
        torch.cuda.empty_cache()
    if "--no-profile" in sys.argv:
        return
    chosen = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--profile=")]
    name = next((n for n in variants if chosen and chosen[0] in n), next(iter(variants)))
    kw, before = variants[name]
    undo = before() if before else None
    print(f"\nprofiled variant: {name}")
    model, step = setup(**kw)
    ms = timed(step, n=5)
    sync_report(step)
    from torch.profiler import ProfilerActivity, profile

    steps = 3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    out = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--table-out=")]
    kernels_ms, busy, _ = kernel_time(prof, steps, keep=Path(out[0]).with_suffix(".trace.json") if out else None)
    # GPU busy over the profiled span: the rest is time the GPU waits for the host (launches, syncs)
    print(f"\nstep {ms:.1f} ms; kernels {kernels_ms:.1f} ms/step; GPU busy {busy:.0%} of the profiled span "
          "(the profiler slows the host, so the unprofiled step idles less)")
    print(averages.table(sort_by="self_cuda_time_total", row_limit=45, max_name_column_width=90))
    # Which matmul shapes cost what (an under-filled GEMM shows as a low TFLOP/s for its shape)
    print("\nmatmuls by input shapes (CUDA ms per step, calls per step, TFLOP/s):")
    for a in sorted(prof.key_averages(group_by_input_shape=True), key=lambda a: -a.self_device_time_total):
        if a.key not in ("aten::mm", "aten::addmm", "aten::bmm") or not a.input_shapes:
            continue
        first = 1 if a.key == "aten::addmm" else 0  # addmm's first argument is the bias
        mats = [tuple(x) for x in a.input_shapes[first:first + 2]]  # positional: an out= shape may follow
        ok = len(mats) == 2 and all(len(m) in (2, 3) for m in mats)
        flops = 2 * mats[0][-2] * mats[0][-1] * mats[1][-1] * (mats[0][0] if len(mats[0]) == 3 else 1) if ok else 0
        ms = a.self_device_time_total / 1e3 / steps
        calls = a.count / steps
        rate = flops * calls / (ms / 1e3) / 1e12 if ms else 0
        print(f"  {a.key:<12} {str(a.input_shapes)[:70]:<70} {ms:7.2f} ms {calls:5.0f} × {rate:6.0f} TFLOP/s")
    if out:  # every kernel, for a full breakdown (the trace was written above)
        Path(out[0]).write_text(averages.table(sort_by="self_cuda_time_total", row_limit=-1, max_name_column_width=160))


if __name__ == "__main__":
    main()
