"""Where and with what a run ran: hardware, library versions, code commit (for summary.json and the report).

Only facts read from the machine; whatever cannot be read is left out rather than guessed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device, energy_backend: str = "none") -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "energy_meter": energy_backend,
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 1024**3, 1),
                    gpus_visible=torch.cuda.device_count(), cuda=torch.version.cuda)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            info["world_size"] = dist.get_world_size()
    except ImportError:
        pass
    return info


def code_commit() -> str | None:
    """The git commit of the amylum checkout that ran (None outside a git checkout); '+dirty' if modified."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    # GIT_OPTIONAL_LOCKS=0: `git status` must not refresh (write) the index of someone's checkout.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=5, check=True, env=env).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None
