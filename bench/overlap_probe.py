"""Can the optimizer step hide the frozen encoder's forward? A probe before building it into the step.

    python bench/overlap_probe.py

In the VLM step (bench/gpu_step.py) AdamW over Qwen2-1.5B is memory-bound (~7.3 ms at ~3 TB/s on
an H100) and the frozen SigLIP-so400m forward is mostly GEMMs. The encoder of step n+1 needs
nothing from step n's optimizer, so the two could run at once on two streams. This times, each
captured as one CUDA graph: the encoder forward alone, the AdamW step alone, both in sequence on
one stream, and both at once (optimizer on a second stream, joined after). The gain of the last
row over the sequence is what deferring the optimizer into the next step could save.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.parallel.blocks import compile_blocks  # noqa: E402
from amylum.runtime.adamw_triton import TritonAdamW  # noqa: E402
from gpu_step import PRESETS, Shape, build, make_batch  # noqa: E402


def graph_ms(fn, reps: int = 20) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture (compilation, allocator)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    preset, rows, prompt, text, images, audio_s, train_llm = PRESETS["vlm"]
    model = build(preset, "cuda", torch.bfloat16, "flex-flash", "multimodal", train_llm, 0)
    compile_blocks(model, merge_matmuls=True)
    batch = make_batch(model, Shape(rows, prompt, text, images, audio_s), 32000, 0).to("cuda")
    branch = model.encoders["vision"]
    pixels = batch.encoder_inputs["vision"]
    params = [p for p in model.llm.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = TritonAdamW(params, lr=1e-5)
    side = torch.cuda.Stream()

    def encode():
        with torch.no_grad():
            branch.encode(**pixels)

    def sequence():
        encode()
        opt.step()

    def overlapped():
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            opt.step()
        encode()
        torch.cuda.current_stream().wait_stream(side)

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; SigLIP-so400m forward on {rows} images, "
          f"AdamW over {sum(p.numel() for p in params) / 1e9:.2f} G bf16 parameters; CUDA graphs, median of 20")
    results = {name: graph_ms(fn) for name, fn in
               (("encoder forward", encode), ("AdamW step", opt.step), ("both, one stream", sequence),
                ("both, two streams", overlapped))}
    for name, ms in results.items():
        print(f"  {name:<20} {ms:7.2f} ms")
    saved = results["both, one stream"] - results["both, two streams"]
    print(f"  overlap saves {saved:.2f} ms of {results['encoder forward']:.2f} ms of encoder forward")


if __name__ == "__main__":
    main()
