"""Measure per-(stage, action) time and energy at each GPU clock (``amylum energy-profile``).

The sweep (``sweep``) is generic: it takes one closure per (stage, action) and a ``GpuClocks``
(lock a clock, read the energy counter, synchronize, reset). For each clock from the highest
down it locks the clock, warms up, runs each closure ``repeats`` times between two readings of
the GPU's cumulative energy counter, and records the mean time and energy. Like Perseus it
stops once the total energy over all closures has risen ``stop_after_rises`` clocks in a row
(slower clocks are then Pareto-dominated). Locked clocks are reset afterwards, errors included.
Records are the JSON-lines format ``profiles.from_measurements`` reads.

Setting clocks needs CAP_SYS_ADMIN (or root). Without a GPU, without ``pynvml`` or without the
privilege, ``open_nvml`` raises ``EnergyProfileUnavailable`` with the reason: nothing is
measured and no file is written (never made-up numbers).

Workloads for a plan file (``proxy_workloads``): the runtime does not yet hand its stage
closures to the sweep, so each (stage, action) is measured on a bf16 matmul proxy carrying the
cost model's FLOPs for it (time at max clock × the GPU type's achievable rate). It captures how
dense transformer work scales with the SM clock, not a stage's memory-bound kernels; the record
says ``"workload": "matmul-proxy"``. Per GPU: ``plan_dag`` multiplies energy by the TP width.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence


class EnergyProfileUnavailable(RuntimeError):
    """Measuring per-clock energy is impossible here; the message says why and what to do."""


class GpuClocks(Protocol):
    def supported_mhz(self) -> list[int]: ...

    def lock(self, mhz: int) -> None: ...

    def reset(self) -> None: ...

    def energy_j(self) -> float: ...  # cumulative counter

    def sync(self) -> None: ...


_HOW = ("run as root, in a container started with --cap-add SYS_ADMIN, or ask an administrator; "
        "do not change clocks on shared GPUs. `bench/gpu_energy.py` measures J/step at default clocks")


class NvmlClocks:
    """NVML clock control and energy counter of one GPU (constructed by ``open_nvml``)."""

    def __init__(self, nvml, handle, sync: Callable[[], None]) -> None:
        self._nvml, self._h, self._sync = nvml, handle, sync

    def supported_mhz(self) -> list[int]:
        mem = max(self._nvml.nvmlDeviceGetSupportedMemoryClocks(self._h))
        return sorted(set(self._nvml.nvmlDeviceGetSupportedGraphicsClocks(self._h, mem)), reverse=True)

    def lock(self, mhz: int) -> None:
        self._nvml.nvmlDeviceSetGpuLockedClocks(self._h, mhz, mhz)

    def reset(self) -> None:
        self._nvml.nvmlDeviceResetGpuLockedClocks(self._h)

    def energy_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h) / 1000.0  # mJ → J

    def sync(self) -> None:
        self._sync()


def open_nvml(index: int = 0) -> NvmlClocks:
    """The GPU ``index`` with its clocks under our control, or EnergyProfileUnavailable."""
    try:
        import torch
    except ImportError:
        raise EnergyProfileUnavailable("torch is not installed: nothing to run on a GPU") from None
    if not torch.cuda.is_available():
        raise EnergyProfileUnavailable("no CUDA GPU visible: per-clock energy cannot be measured on this machine")
    try:
        import pynvml
    except ImportError:
        raise EnergyProfileUnavailable("the pynvml module (pip install nvidia-ml-py) is needed to set clocks "
                                       "and read the energy counter") from None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
    except Exception as e:  # NVML errors: no such device, pre-Volta (no energy counter)
        raise EnergyProfileUnavailable(f"GPU {index}: cannot read its energy counter ({type(e).__name__}: {e})") from None
    gpu = NvmlClocks(pynvml, h, lambda: torch.cuda.synchronize(index))
    clocks = gpu.supported_mhz()
    try:  # the privilege check: lock at the top clock, then undo
        gpu.lock(clocks[0])
        gpu.reset()
    except Exception as e:
        raise EnergyProfileUnavailable(f"GPU {index}: no privilege to set clocks ({type(e).__name__}: {e}); "
                                       + _HOW) from None
    return gpu


@dataclass(frozen=True)
class Workload:
    stage: int
    kind: str  # F, B or W
    run: Callable[[], None]
    scale: float = 1.0  # recorded time/energy = measured × scale (a proxy smaller than the real work)


def sweep(workloads: Sequence[Workload], gpu: GpuClocks, clocks: Sequence[int] | None = None,
          repeats: int = 3, warmup: int = 1, stop_after_rises: int = 5,
          extra: Mapping[str, object] | None = None) -> list[dict]:
    """One record per (workload, clock), clocks from high to low; see the module docstring."""
    if not workloads:
        raise ValueError("nothing to measure: no workloads")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    import time

    clocks = sorted(clocks if clocks is not None else gpu.supported_mhz(), reverse=True)
    records: list[dict] = []
    rises, last = 0, None
    try:
        for f in clocks:
            gpu.lock(f)
            total = 0.0
            for w in workloads:
                for _ in range(warmup):
                    w.run()
                gpu.sync()
                e0, t0 = gpu.energy_j(), time.perf_counter()
                for _ in range(repeats):
                    w.run()
                gpu.sync()
                t, e = (time.perf_counter() - t0) / repeats, (gpu.energy_j() - e0) / repeats
                total += e * w.scale
                records.append({"stage": w.stage, "kind": w.kind, "freq_mhz": int(f), "time_s": t * w.scale,
                                "energy_j": e * w.scale, **(extra or {})})
            rises = rises + 1 if last is not None and total > last else 0
            last = total
            if rises >= stop_after_rises:
                break
    finally:
        gpu.reset()
    return records


def write_measurements(records: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def proxy_workloads(times_at_max: Mapping[tuple[int, str], float], flops_per_s: float, device: str = "cuda",
                    size: int = 4096, max_gemms: int = 64) -> list[Workload]:
    """A bf16 ``size``² matmul chain per (stage, action) with the FLOPs the cost model gives it
    (time × achievable rate); capped at ``max_gemms`` matmuls, the rest scaled (``scale``)."""
    import torch

    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    per_gemm = 2.0 * size ** 3
    out = []
    for (stage, kind), t in sorted(times_at_max.items()):
        want = max(t * flops_per_s / per_gemm, 1.0)
        n = int(min(max_gemms, round(want))) or 1

        def run(n: int = n) -> None:  # bind n now: one closure per workload
            for _ in range(n):
                torch.mm(a, b)

        out.append(Workload(stage, kind, run, want / n))
    return out
