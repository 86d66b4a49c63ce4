"""Metrics sinks of a run: JSON lines (one object per record) and TensorBoard, in the run directory."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

GIB = 1024**3


def peak_memory_gib(device: torch.device) -> dict[str, float]:
    """Peak memory so far: the device allocator's on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return {
            "peak_mem_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_mem_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB,
        }
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {"peak_rss_gib": rss * (1 if sys.platform == "darwin" else 1024) / GIB}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    """Appends ``{"step", "kind", ...}`` records to ``metrics.jsonl`` and scalars to TensorBoard.

    ``start_step``: when resuming, records after it (written by the interrupted run past its last
    checkpoint) are dropped from both sinks, so the files read as one uninterrupted run.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, start_step: int = 0) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_jsonl(self.path) if r["step"] <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, kind: str, values: dict[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                # Flags (energy_available) and reasons are JSONL-only: a 0 on a chart would read as a measurement.
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
