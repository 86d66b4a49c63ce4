"""Measured energy per training step (J/step) on one GPU at default clocks.

For each preset, one training step = forward + backward + AdamW update of the preset's LLM
(random weights from its config, random tokens; bf16 autocast, fp32 weights), timed and metered
as one window over --steps steps after --warmup steps (J/step = window energy / steps). Energy comes from the GPU's cumulative energy counter:
through amylum's EnergyMeter (zeus, else pynvml) or, if neither package is installed, NVML
called directly through ctypes. Clocks are never changed (shared GPUs: default clocks only).

    python bench/gpu_energy.py                      # on a GPU: tiny and real-size presets
    python bench/gpu_energy.py --cpu-smoke          # here: runs on CPU, metering "not available"

Writes a JSON record with --out. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

# Fallback sizes if transformers/amylum presets cannot be imported on the GPU machine.
FALLBACK = {
    "tiny-vlm": dict(hidden=128, layers=2, heads=4, ffn=256, vocab=512),
    "siglip-so400m+qwen2-1.5b": dict(hidden=1536, layers=28, heads=12, ffn=8960, vocab=151936),
}


class CtypesNvml:
    """Total energy counter (mJ) of one GPU via libnvidia-ml, no Python package needed."""

    def __init__(self, index: int) -> None:
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise RuntimeError("nvmlInit failed")
        self.h = ctypes.c_void_p()
        if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(self.h)) != 0:
            raise RuntimeError(f"no NVML device {index}")
        self.read()

    def read(self) -> float:
        e = ctypes.c_ulonglong()
        rc = self.lib.nvmlDeviceGetTotalEnergyConsumption(self.h, ctypes.byref(e))
        if rc != 0:
            raise RuntimeError(f"nvmlDeviceGetTotalEnergyConsumption returned {rc} (pre-Volta GPU?)")
        return e.value / 1000.0


class Meter:
    """amylum's EnergyMeter, else ctypes NVML, else "not available" (None + reason)."""

    def __init__(self, device: torch.device) -> None:
        from amylum.runtime.energy import EnergyMeter

        self.m = EnergyMeter()
        self.backend = self.m.backend
        self.reason = self.m.reason
        self.raw = None
        if not self.m.available and device.type == "cuda":
            vis = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
            try:
                self.raw = CtypesNvml(int(vis) if vis.isdigit() else 0)
                self.backend, self.reason = "nvml-ctypes", ""
            except Exception as e:
                self.reason += f"; ctypes NVML: {e}"

    def begin(self) -> None:
        if self.raw:
            torch.cuda.synchronize()
            self.e0 = self.raw.read()
        else:
            self.m.begin_step()

    def end(self) -> float | None:
        if self.raw:
            torch.cuda.synchronize()
            return self.raw.read() - self.e0
        return self.m.end_step().energy_j


def build_llm(name: str, device: torch.device) -> tuple[torch.nn.Module, int, str]:
    try:
        from transformers import AutoModelForCausalLM

        from amylum.models.presets import preset_configs

        cfg = preset_configs(name)["llm"]
        model = AutoModelForCausalLM.from_config(cfg)
        return model.to(device), cfg.vocab_size, "HF " + type(model).__name__
    except ImportError as e:
        print(f"[{name}] transformers/amylum unavailable ({e}); using a torch-only stand-in of the same size")
    f = FALLBACK[name]

    class StandIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(f["vocab"], f["hidden"])
            layer = torch.nn.TransformerEncoderLayer(f["hidden"], f["heads"], f["ffn"], batch_first=True, norm_first=True)
            self.body = torch.nn.TransformerEncoder(layer, f["layers"])
            self.head = torch.nn.Linear(f["hidden"], f["vocab"], bias=False)

        def forward(self, input_ids, labels):
            n = input_ids.shape[1]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(n, device=input_ids.device)
            h = self.body(self.emb(input_ids), mask=mask, is_causal=True)
            logits = self.head(h)[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1))
            return type("Out", (), {"loss": loss})()

    return StandIn().to(device), f["vocab"], "torch stand-in"


def measure(name: str, device: torch.device, batch: int, seq: int, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model, vocab, impl = build_llm(name, device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    meter = Meter(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    # One window over all steps: the energy counter updates every few tens of ms, longer than
    # a tiny model's step, so per-step windows would read 0 J.
    t0 = time.perf_counter()
    meter.begin()
    for _ in range(steps):
        step()
    e = meter.end()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    joules = [e / steps] if e is not None else []
    tokens = batch * seq
    row = {"preset": name, "impl": impl, "params": params, "tokens_per_step": tokens, "step_s": dt,
           "backend": meter.backend}
    if joules:
        j = sum(joules) / len(joules)
        row.update(j_per_step=j, avg_power_w=j / dt, tokens_per_j=tokens / j, energy_available=True)
    else:
        row.update(j_per_step=None, energy_available=False, reason=meter.reason)
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    del model, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny-vlm,siglip-so400m+qwen2-1.5b")
    ap.add_argument("--batch", default="8,4", help="per preset, comma-separated")
    ap.add_argument("--seq", default="512,1024", help="per preset, comma-separated")
    ap.add_argument("--steps", default="300,30", help="measured steps per preset, comma-separated")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny preset, 2 steps, on CPU")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    presets = args.presets.split(",")
    batches = [int(x) for x in args.batch.split(",")]
    seqs = [int(x) for x in args.seq.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    if args.cpu_smoke:
        device, presets, batches, seqs, steps, args.warmup = torch.device("cpu"), ["tiny-vlm"], [2], [32], [2], 1
    elif not torch.cuda.is_available():
        print("no CUDA GPU visible; use --cpu-smoke to check the script on CPU")
        return 2
    else:
        device = torch.device("cuda", 0)
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    print(json.dumps(env))
    rows = []
    for i, name in enumerate(presets):
        b, s, n = (x[min(i, len(x) - 1)] for x in (batches, seqs, steps))
        try:
            rows.append(measure(name, device, b, s, n, args.warmup))
        except Exception as e:  # OOM or a model-building problem: report it and go on
            traceback.print_exc()
            rows.append({"preset": name, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| preset | model | params | tokens/step | step time | J/step | avg power | tokens/J | meter |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['preset']} | error: {r['error'][:80]} | | | | | | | |")
        elif r["energy_available"]:
            print(f"| {r['preset']} | {r['impl']} | {r['params'] / 1e6:.1f} M | {r['tokens_per_step']} | "
                  f"{r['step_s'] * 1e3:.1f} ms | {r['j_per_step']:.2f} | {r['avg_power_w']:.0f} W | "
                  f"{r['tokens_per_j']:.1f} | {r['backend']} |")
        else:
            print(f"| {r['preset']} | {r['impl']} | {r['params'] / 1e6:.1f} M | {r['tokens_per_step']} | "
                  f"{r['step_s'] * 1e3:.1f} ms | not available | | | {r['reason']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
