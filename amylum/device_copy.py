"""Host-to-device copies that do not make the host wait for the GPU.

A copy from pageable host memory to a GPU is synchronous: the host waits until the GPU's queue
reaches it, and the GPU then idles while the host prepares the next launches. From pinned
memory the copy is queued like a kernel. One helper, used wherever a step moves host data
(batches, masks, host-derived indices, scalars) to the device.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str, non_blocking: bool = True) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory when ``non_blocking``."""
    if non_blocking and t.device.type == "cpu" and torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=non_blocking)
