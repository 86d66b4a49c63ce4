"""The VLM step's matmuls (bench/gpu_step.py, Qwen2-1.5B over 4 × 1,769 tokens) one by one, with the
layouts autograd gives them, under cuBLAS settings that might remove its per-call memsets.

    python bench/gemm_shapes.py                 # default settings, then each env variant in a child process
    python bench/gemm_shapes.py --tokens 7076 7168

Per linear layer (q/k/v merged, o, gate, up, down) and the LM head on the 4,096 targets: forward
x·Wᵀ, input gradient g·W and weight gradient gᵀ·x, each with its kernel time (CUDA events), its
rate and the memsets it issues (profiler). The last line of each table sums one step's matmuls
(28 layers + head). cuBLAS reads its workspace settings once per process, so each variant runs in
a child process with its environment.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_parts import cuda_ms, memsets_per_call  # noqa: E402

HIDDEN, INTER, Q_HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB, TARGETS = 1536, 8960, 12, 2, 128, 28, 151936, 4096
VARIANTS = {
    "default": {},
    "no workspace": {"CUBLAS_WORKSPACE_CONFIG": ":0:0", "CUBLASLT_WORKSPACE_SIZE": "0"},
    "cublaslt route": {"AMYLUM_BENCH_BLAS": "cublaslt"},
}


def step_gemms(tokens: int) -> list[tuple[str, int, tuple]]:
    """(name, calls per step, (rows, in, out)) for every linear of the step."""
    qkv = (Q_HEADS + 2 * KV_HEADS) * HEAD_DIM
    layer = [("q/k/v", (tokens, HIDDEN, qkv)), ("o", (tokens, HIDDEN, HIDDEN)), ("gate", (tokens, HIDDEN, INTER)),
             ("up", (tokens, HIDDEN, INTER)), ("down", (tokens, INTER, HIDDEN))]
    return [(n, LAYERS, s) for n, s in layer] + [("head", 1, (TARGETS, HIDDEN, VOCAB))]


def table(tokens: int, label: str) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    total_ms, total_flop, total_memsets = 0.0, 0.0, 0.0
    print(f"\n[{label}] tokens {tokens}")
    print(f"  {'matmul':<16} {'ms':>7} {'TFLOP/s':>8} {'memsets':>8}")
    for name, calls, (rows, d_in, d_out) in step_gemms(tokens):
        x = torch.randn(rows, d_in, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(d_out, d_in, device="cuda", dtype=torch.bfloat16, generator=g)
        gy = torch.randn(rows, d_out, device="cuda", dtype=torch.bfloat16, generator=g)
        flop = 2 * rows * d_in * d_out
        for part, fn in (("fwd", lambda: x @ w.t()), ("dgrad", lambda: gy @ w), ("wgrad", lambda: gy.t() @ x)):
            ms = cuda_ms(fn, reps=7, calls=10)
            m = memsets_per_call(fn, calls=5)
            total_ms += calls * ms
            total_flop += calls * flop
            total_memsets += calls * m
            print(f"  {name + ' ' + part:<16} {ms:7.3f} {flop / ms / 1e9:8.0f} {m:8.1f}")
    print(f"  {'one step':<16} {total_ms:7.2f} {total_flop / total_ms / 1e9:8.0f} {total_memsets:8.0f}   "
          f"({total_flop / 1e12:.1f} TFLOP)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[7076])
    ap.add_argument("--variant", choices=sorted(VARIANTS), help="run one variant in this process (used by the parent)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs CUDA")
    if args.variant:
        if os.environ.get("AMYLUM_BENCH_BLAS"):
            torch.backends.cuda.preferred_blas_library(os.environ["AMYLUM_BENCH_BLAS"])
        for t in args.tokens:
            table(t, args.variant)
        return
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, env in VARIANTS.items():
        cmd = [sys.executable, __file__, "--variant", name, "--tokens", *map(str, args.tokens)]
        done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        print(done.stdout, end="", flush=True)
        if done.returncode:
            print(f"[{name}] failed ({done.returncode}): {done.stderr[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
