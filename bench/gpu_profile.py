"""Where does amylum's single-GPU step spend its time? Variants of bench/gpu_step.py's amylum row + a profile.

    python bench/gpu_profile.py            # H100: variant timings, then the top CUDA kernels of the default path
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gpu_step import PRESETS, Shape, build, make_batch  # noqa: E402
from amylum.parallel.blocks import compile_blocks  # noqa: E402


def setup(backend="fast", compile_=True, chunk=2048, compile_kwargs=None):
    preset, rows, prompt, text, images, audio_s, train_llm = PRESETS["vlm"]
    model = build(preset, "cuda", torch.bfloat16, backend, "multimodal", train_llm, 0)
    model.validate_inputs = False
    model.loss_chunk_size = chunk
    if compile_:
        compile_blocks(model, **(compile_kwargs or {}))
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, fused=True)
    batch = make_batch(model, Shape(rows, prompt, text, images, audio_s), 32000, 0).to("cuda", non_blocking=True)

    def step():
        model(batch).loss.backward()
        opt.step()
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

    backends.EXPAND_KV_BELOW_PROGRAMS_PER_SM = 0.0


def main():
    variants = {
        "default (flex, compile, chunk 2048)": ({}, None),
        "no GQA K/V expansion": ({}, _no_kv_expansion),
    }
    for name, (kw, before) in variants.items():
        import amylum.attention.backends as backends

        saved = backends.EXPAND_KV_BELOW_PROGRAMS_PER_SM
        try:
            if before:
                before()
            torch.cuda.reset_peak_memory_stats()
            model, step = setup(**kw)
            ms = timed(step)
            print(f"{name:<40} {ms:7.1f} ms/step  peak {torch.cuda.max_memory_allocated() / 2**30:5.1f} GiB", flush=True)
            del model, step
        except Exception as e:  # a variant that fails is reported, not fatal
            print(f"{name:<40} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        finally:
            backends.EXPAND_KV_BELOW_PROGRAMS_PER_SM = saved
            torch._dynamo.reset()  # the next variant compiles its own blocks
        torch.cuda.empty_cache()
    model, step = setup()
    ms = timed(step, n=5)
    from torch.profiler import ProfilerActivity, profile

    steps = 3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    # device-side events only: the host-side launch records of compiled kernels carry the same
    # device time and would count it twice
    kernels_ms = sum(e.device_time for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3 / steps
    # GPU busy vs step time: the gap is time the GPU waits for the host (launches, guards)
    print(f"\nstep {ms:.1f} ms; GPU kernel time {kernels_ms:.1f} ms/step ({kernels_ms / ms:.0%} busy)")
    print(averages.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))


if __name__ == "__main__":
    main()
