"""Energy metering and GPU clock control for the runtime.

Metering (every run). ``EnergyMeter`` reads the GPUs' cumulative energy counters around each
training step, through Zeus's ``ZeusMonitor`` when the ``zeus`` package is installed, else
directly through NVML (``nvmlDeviceGetTotalEnergyConsumption``, Volta or newer, mJ). Both
imports are lazy: amylum does not depend on either. Without a GPU (or without both packages)
every reading is ``None`` with a reason — never a fake zero — and ``metrics()`` says so.
Per-step results can be summed across ranks (``all_ranks_total``): each rank meters the GPU it
drives, and the sum is the job's energy.

Clock control. ``ClockController`` sets locked SM clocks per computation from a frequency
plan. It changes nothing unless constructed with ``enabled=True``; otherwise (and when the
process lacks the privilege, CAP_SYS_ADMIN or the zeusd daemon) it is a dry run that logs
the clocks it would set, warning once. Clocks it did lock are reset on ``close()``, on leaving
its ``with`` block (errors included) and at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- metering
@dataclass(frozen=True)
class StepEnergy:
    """One step's energy; ``energy_j`` is None when it could not be measured (see ``reason``)."""

    time_s: float
    energy_j: float | None
    tokens: int = 0
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.energy_j is not None

    @property
    def avg_power_w(self) -> float | None:
        return None if self.energy_j is None or self.time_s <= 0 else self.energy_j / self.time_s

    @property
    def tokens_per_j(self) -> float | None:
        return None if not self.energy_j else self.tokens / self.energy_j

    def metrics(self) -> dict[str, Any]:
        """Flat record for the metrics sink: numbers when measured, an explicit marker when not."""
        if self.energy_j is None:
            return {"energy_available": False, "energy_unavailable_reason": self.reason}
        return {"energy_available": True, "energy_j": self.energy_j, "avg_power_w": self.avg_power_w,
                "tokens_per_j": self.tokens_per_j}


class _Backend(Protocol):
    name: str

    def begin(self) -> None: ...

    def end(self) -> float: ...  # joules since begin, summed over this process's GPUs


class _ZeusBackend:
    name = "zeus"

    def __init__(self, gpu_indices: Sequence[int] | None) -> None:
        from zeus.monitor import ZeusMonitor  # lazy: optional dependency

        self._mon = ZeusMonitor(gpu_indices=list(gpu_indices) if gpu_indices is not None else None)
        self._n = 0

    def begin(self) -> None:
        self._n += 1
        self._mon.begin_window(f"amylum_step_{self._n}")

    def end(self) -> float:
        m = self._mon.end_window(f"amylum_step_{self._n}")
        return float(sum(m.gpu_energy.values()))


def _nvml_handles(pynvml: Any, cuda_indices: Sequence[int] | None) -> list[Any]:
    """NVML handles of CUDA devices. NVML numbers every GPU of the machine, CUDA only those in
    ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs), so CUDA index i is that list's i-th entry."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else None
    if cuda_indices is None:
        cuda_indices = range(len(entries) if entries is not None else pynvml.nvmlDeviceGetCount())
    handles = []
    for i in cuda_indices:
        if entries is None:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(i))
        elif entries[i].isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entries[i])))
        else:  # GPU-<uuid> / MIG-<uuid>
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(entries[i]))
    return handles


class _NvmlBackend:
    name = "nvml"

    def __init__(self, gpu_indices: Sequence[int] | None, sync: Callable[[], None] | None) -> None:
        import pynvml  # lazy: optional dependency (nvidia-ml-py)

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = _nvml_handles(pynvml, gpu_indices)
        for h in self._handles:  # fails on pre-Volta GPUs: no energy counter
            pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        self._sync = sync
        self._start: list[int] = []

    def _read(self) -> list[int]:
        return [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]

    def begin(self) -> None:
        if self._sync:
            self._sync()
        self._start = self._read()

    def end(self) -> float:
        if self._sync:
            self._sync()
        return sum(b - a for a, b in zip(self._start, self._read())) / 1000.0  # mJ → J


def _cuda_sync() -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.synchronize if torch.cuda.is_available() else None


class EnergyMeter:
    """Energy of each training step on this process's GPUs.

    ``backend``: "auto" (zeus, then NVML), "zeus", "nvml", or "none". Construction never raises
    for a missing GPU or package: the meter is then unavailable and says why.
    """

    def __init__(self, gpu_indices: Sequence[int] | None = None, backend: str = "auto") -> None:
        self.reason = ""
        self._backend: _Backend | None = None
        self._t0: float | None = None
        if backend not in ("auto", "zeus", "nvml", "none"):
            raise ValueError(f"unknown energy backend {backend!r}; choose auto, zeus, nvml or none")
        if backend == "none":
            self.reason = "energy metering disabled"
            return
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            self.reason = "no CUDA GPU visible: energy not measured"
            return
        errors = []
        for name in (("zeus", "nvml") if backend == "auto" else (backend,)):
            try:
                self._backend = _ZeusBackend(gpu_indices) if name == "zeus" else _NvmlBackend(gpu_indices, _cuda_sync())
                return
            except Exception as e:  # ImportError, NVML errors, unsupported GPU: all mean "not available"
                errors.append(f"{name}: {type(e).__name__}: {e}")
        self.reason = "energy counters unavailable (" + "; ".join(errors) + ")"

    @property
    def available(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> str:
        return self._backend.name if self._backend else "none"

    def begin_step(self) -> None:
        self._t0 = time.perf_counter()
        if self._backend:
            self._backend.begin()

    def end_step(self, tokens: int = 0) -> StepEnergy:
        if self._t0 is None:
            raise RuntimeError("end_step() without begin_step()")
        energy = self._backend.end() if self._backend else None
        dt = time.perf_counter() - self._t0
        self._t0 = None
        return StepEnergy(dt, energy, tokens, "" if energy is not None else self.reason)


def all_ranks_total(step: StepEnergy) -> StepEnergy:
    """Sum a step's energy and tokens over all ranks (time: the slowest rank's).

    Needs an initialized torch.distributed process group; without one, returns ``step``.
    If any rank could not measure, the total is unavailable too (a partial sum would be a lie).
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return step
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    vals = torch.tensor([step.energy_j if step.available else 0.0, float(step.tokens),
                         0.0 if step.available else 1.0], dtype=torch.float64, device=dev)
    dist.all_reduce(vals)
    t = torch.tensor([step.time_s], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    missing = int(vals[2].item())
    if missing:
        return StepEnergy(float(t.item()), None, int(vals[1].item()),
                          step.reason or f"{missing} rank(s) could not measure energy")
    return StepEnergy(float(t.item()), float(vals[0].item()), int(vals[1].item()))


class EnergyTally:
    """Per-step readings summed over a metrics window (``flush``) and over the run (``run_summary``).

    ``flush`` sums the window over all ranks (``all_ranks_total``: a collective, so every rank
    must call it at the same log steps) and returns the trainer's energy metrics: energy per
    step, average power and tokens per joule of the whole job, or ``energy_available: False``
    with the reason. A window with any unmeasured step is unavailable as a whole.
    """

    def __init__(self) -> None:
        self.run_energy_j = 0.0
        self.run_steps = 0
        self.run_reason = ""  # set once any window could not be measured
        self._new_window()

    def _new_window(self) -> None:
        self._time_s, self._energy_j, self._tokens, self._steps, self._reason = 0.0, 0.0, 0, 0, ""

    def add(self, step: StepEnergy) -> None:
        self._time_s += step.time_s
        self._tokens += step.tokens
        self._steps += 1
        if step.energy_j is None:
            self._reason = step.reason or "energy not measured"
        else:
            self._energy_j += step.energy_j

    def flush(self) -> dict[str, Any]:
        """The window's metrics (job totals across ranks); starts a new window."""
        steps = self._steps
        local = StepEnergy(self._time_s, None if self._reason else self._energy_j, self._tokens, self._reason)
        self._new_window()
        if not steps:
            return {}
        total = all_ranks_total(local)
        if total.energy_j is None:
            self.run_reason = self.run_reason or total.reason
            return {"energy_available": False, "energy_unavailable_reason": total.reason}
        self.run_energy_j += total.energy_j
        self.run_steps += steps
        return {"energy_available": True, "energy_j_per_step": total.energy_j / steps,
                "avg_power_w": total.avg_power_w, "tokens_per_j": total.tokens_per_j}

    def run_summary(self, backend: str) -> dict[str, Any]:
        """Measured energy of the steps this process trained (a resumed run: since the resume)."""
        if self.run_reason or not self.run_steps:
            return {"available": False, "why": self.run_reason or "no training step was metered"}
        return {"available": True, "backend": backend, "energy_j": self.run_energy_j, "steps": self.run_steps,
                "energy_j_per_step": self.run_energy_j / self.run_steps, "energy_kwh": self.run_energy_j / 3.6e6}


# ------------------------------------------------------------------------------------ clock control
class ClockBackend(Protocol):
    def lock(self, gpu_index: int, mhz: int) -> None: ...

    def reset(self, gpu_index: int) -> None: ...


class _NvmlClocks:
    def __init__(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml

    def lock(self, gpu_index: int, mhz: int) -> None:
        h = self._nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self._nvml.nvmlDeviceSetGpuLockedClocks(h, mhz, mhz)

    def reset(self, gpu_index: int) -> None:
        h = self._nvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self._nvml.nvmlDeviceResetGpuLockedClocks(h)


class ClockController:
    """Sets the locked SM clock of one GPU, or logs what it would set (dry run, the default)."""

    def __init__(self, gpu_index: int = 0, enabled: bool = False, backend: ClockBackend | None = None) -> None:
        self.gpu_index = gpu_index
        self.enabled = enabled
        self.intended: list[int] = []  # every clock asked for, dry run or not
        self._locked = False
        self._warned = False
        self._backend = backend
        if enabled and backend is None:
            try:
                self._backend = _NvmlClocks()
            except Exception as e:
                self._dry(f"cannot control clocks ({type(e).__name__}: {e})")
        atexit.register(self.close)

    def _dry(self, why: str) -> None:
        self.enabled = False
        if not self._warned:
            log.warning("%s; dry run: intended clocks are only logged", why)
            self._warned = True

    def set_clock(self, mhz: int) -> None:
        self.intended.append(mhz)
        if not self.enabled:
            log.debug("dry run: GPU %d would lock SM clock at %d MHz", self.gpu_index, mhz)
            return
        try:
            self._backend.lock(self.gpu_index, mhz)
            self._locked = True
        except Exception as e:  # typically NVML_ERROR_NO_PERMISSION without CAP_SYS_ADMIN
            self._dry(f"setting GPU {self.gpu_index} clock failed ({type(e).__name__}: {e}); "
                      "run with CAP_SYS_ADMIN or the zeusd daemon to enable")

    def close(self) -> None:
        """Reset locked clocks if this controller locked any. Safe to call more than once."""
        if self._locked and self._backend is not None:
            try:
                self._backend.reset(self.gpu_index)
            except Exception as e:
                log.error("could not reset GPU %d clocks: %s", self.gpu_index, e)
                return
            self._locked = False

    def __enter__(self) -> "ClockController":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlanClocks:
    """Applies a frequency plan: before each computation, set the clock the plan gives it.

    ``steps`` is the rank's list from ``FrequencyPlan.ranks[rank]``; ``before(action, stage,
    microbatch)`` checks that the runtime runs the plan's order (a mismatch means the plan is
    for another schedule) and sets the clock; ``end_step()`` checks the list was consumed.
    """

    def __init__(self, steps: Sequence[Any], controller: ClockController) -> None:
        self.steps = list(steps)
        self.controller = controller
        self._i = 0

    def before(self, action: str, stage: int, microbatch: int) -> None:
        if self._i >= len(self.steps):
            raise RuntimeError(f"plan exhausted: {action}{stage}.{microbatch} has no clock "
                               f"(plan has {len(self.steps)} computations per step)")
        st = self.steps[self._i]
        if (st.action, st.stage, st.microbatch) != (action, stage, microbatch):
            raise RuntimeError(f"plan expects {st.action}{st.stage}.{st.microbatch} at position {self._i}, "
                               f"runtime runs {action}{stage}.{microbatch}: plan is for another schedule")
        self._i += 1
        self.controller.set_clock(st.mhz)

    def end_step(self) -> None:
        if self._i != len(self.steps):
            raise RuntimeError(f"step ended after {self._i} of {len(self.steps)} planned computations")
        self._i = 0
