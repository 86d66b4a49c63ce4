"""Host-to-device copies that do not make the host wait for the GPU.

A copy from pageable host memory to a GPU is synchronous: the host waits until the GPU's queue
reaches it, and the GPU then idles while the host prepares the next launches. From pinned
memory the copy is queued like a kernel. One helper, used wherever a step moves host data
(batches, masks, host-derived indices, scalars) to the device.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str, non_blocking: bool = True) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory when ``non_blocking``.

    Refused while the current CUDA stream is being captured into a graph: the graph would copy
    from the same host address at every replay, after the host buffer was freed and reused.
    Host data a captured step needs must reach the device before capture, as static inputs
    (runtime/graph_step.py).
    """
    target = torch.device(device)
    if t.device.type == "cpu" and target.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"a host tensor of shape {tuple(t.shape)} is copied to the GPU inside a CUDA graph capture; "
            "its data would be read from freed host memory at every replay. Compute it on the device, "
            "or pass it in with the step's inputs"
        )
    if non_blocking and t.device.type == "cpu" and target.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=non_blocking)
