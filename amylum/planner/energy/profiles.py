"""Time and energy of each (stage, action) at each GPU clock.

Three sources, one type (``FrequencyProfile``):
- ``from_csv``: Perseus's format ``stage,instruction,frequency,time,energy`` (instruction
  forward/backward/weight or F/B/W; an optional ``microbatch`` column gives per-microbatch
  rows for heterogeneous MLLM microbatches, gap 1). Repeated rows are averaged.
- ``from_measurements``: JSON Lines written while profiling on a GPU, one record per measured
  computation: {"stage", "kind", "freq_mhz", "time_s", "energy_j"[, "microbatch"]}; averaged.
- ``analytic``: a documented model for planning without measurements (below).

Analytic model (per GPU type, ``AnalyticGPU``). For a computation that takes t_ref at the
maximum SM clock f_max and clock f, with x = f / f_max:

    time    t(f) = t_ref · (m + (1 − m) / x)            m: share of time bound by memory/launch,
                                                          which does not scale with the SM clock
    voltage V(f) = max(v_floor, x)                       (relative; DVFS tables flatten at low f)
    power   P(f) = P_static + P_dyn · x · V(f)²          (dynamic CMOS power ∝ f·V²)
    energy  e(f) = P(f) · t(f)

It reproduces the shape Perseus measured (energy falls as the clock drops, then flattens and
rises once voltage stops falling and static power dominates) but not any particular GPU: use
measurements for real plans.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .dag import Option

_KIND_NAMES = {"forward": "F", "backward": "B", "weight": "W", "f": "F", "b": "B", "w": "W"}


class ProfileError(ValueError):
    """A profile file or model is malformed, or a lookup has no data."""


def _kind(name: str) -> str:
    k = _KIND_NAMES.get(str(name).strip().lower())
    if k is None:
        raise ProfileError(f"unknown instruction {name!r}; expected forward/backward/weight or F/B/W")
    return k


Key = tuple  # (stage, kind) or (stage, kind, microbatch)


@dataclass(frozen=True)
class FrequencyProfile:
    """Options per (stage, kind) and optionally per (stage, kind, microbatch)."""

    table: Mapping[Key, tuple[Option, ...]]

    def options(self, stage: int, kind: str, microbatch: int | None = None) -> tuple[Option, ...]:
        if microbatch is not None and (stage, kind, microbatch) in self.table:
            return self.table[(stage, kind, microbatch)]
        try:
            return self.table[(stage, kind)]
        except KeyError:
            raise ProfileError(f"no profile for stage {stage} action {kind}"
                               + (f" microbatch {microbatch}" if microbatch is not None else "")) from None

    def to_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["stage", "instruction", "microbatch", "frequency", "time", "energy"])
            for key, opts in sorted(self.table.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
                mb = key[2] if len(key) == 3 else ""
                for o in opts:
                    w.writerow([key[0], key[1], mb, o.freq_mhz, repr(o.time_s), repr(o.energy_j)])


def _average(rows: Iterable[tuple[Key, int, float, float]]) -> FrequencyProfile:
    acc: dict[Key, dict[int, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0]))
    for key, f, t, e in rows:
        a = acc[key][f]
        a[0] += t
        a[1] += e
        a[2] += 1
    table = {key: tuple(Option(f, a[0] / a[2], a[1] / a[2]) for f, a in sorted(per.items(), reverse=True))
             for key, per in acc.items()}
    if not table:
        raise ProfileError("profile has no rows")
    return FrequencyProfile(table)


def from_csv(path: str | Path) -> FrequencyProfile:
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"stage", "instruction", "frequency", "time", "energy"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ProfileError(f"{path}: header must contain {sorted(need)}, got {reader.fieldnames}")
        for i, r in enumerate(reader, start=2):
            try:
                key: Key = (int(r["stage"]), _kind(r["instruction"]))
                if r.get("microbatch") not in (None, ""):
                    key = key + (int(r["microbatch"]),)
                rows.append((key, int(float(r["frequency"])), float(r["time"]), float(r["energy"])))
            except (TypeError, ValueError) as e:
                raise ProfileError(f"{path}:{i}: {e}") from None
    return _average(rows)


def from_measurements(path: str | Path) -> FrequencyProfile:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                key: Key = (int(r["stage"]), _kind(r["kind"]))
                if r.get("microbatch") is not None:
                    key = key + (int(r["microbatch"]),)
                rows.append((key, int(r["freq_mhz"]), float(r["time_s"]), float(r["energy_j"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ProfileError(f"{path}:{i}: bad measurement record ({e!r})") from None
    return _average(rows)


@dataclass(frozen=True)
class AnalyticGPU:
    """Parameters of the analytic model; defaults are A100/H100-like orders of magnitude."""

    f_max_mhz: int = 1740
    f_min_mhz: int = 900
    step_mhz: int = 15
    p_static_w: float = 80.0
    p_dynamic_w: float = 220.0  # at f_max, on top of static
    v_floor: float = 0.6
    mem_fraction: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.f_min_mhz <= self.f_max_mhz) or self.step_mhz <= 0:
            raise ProfileError(f"bad clock range {self.f_min_mhz}..{self.f_max_mhz} step {self.step_mhz}")
        if not (0.0 <= self.mem_fraction < 1.0) or not (0.0 < self.v_floor <= 1.0):
            raise ProfileError("mem_fraction must be in [0, 1) and v_floor in (0, 1]")

    def clocks(self) -> list[int]:
        return list(range(self.f_max_mhz, self.f_min_mhz - 1, -self.step_mhz))

    def options(self, t_ref_s: float) -> tuple[Option, ...]:
        out = []
        for f in self.clocks():
            x = f / self.f_max_mhz
            t = t_ref_s * (self.mem_fraction + (1.0 - self.mem_fraction) / x)
            v = max(self.v_floor, x)
            p = self.p_static_w + self.p_dynamic_w * x * v * v
            out.append(Option(f, t, p * t))
        return tuple(out)


def analytic(times_at_max_clock: Mapping[Key, float], gpu: AnalyticGPU = AnalyticGPU()) -> FrequencyProfile:
    """Profile from each (stage, kind[, microbatch])'s time at the maximum clock."""
    return FrequencyProfile({k: gpu.options(t) for k, t in times_at_max_clock.items()})
