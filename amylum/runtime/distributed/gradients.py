"""Gradient clipping by the norm of the whole model's gradient, when its pieces live on many ranks.

Each rank adds the squares of the gradient elements it holds, once per element of the whole
model: an FSDP shard counts fully (each element is on one replica only), a placement replicated
over a mesh dimension is divided by that dimension's size (e.g. a norm weight on every TP rank),
and a tied embedding held by the first and the last LLM stage counts on the first only. A
parameter that TP leaves whole is on every rank of its TP group: it counts once per group. One
all-reduce over the world then gives the squared norm of the single-process model's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def _local_square_sum(grad: torch.Tensor, tp_width: int) -> torch.Tensor:
    copies = 1
    if hasattr(grad, "to_local"):  # a DTensor: its local shard, less the replicated copies
        for size, placement in zip(grad.device_mesh.shape, grad.placements):
            if placement.is_replicate():
                copies *= size
        if "tp" not in (grad.device_mesh.mesh_dim_names or ()):
            copies *= tp_width  # a parameter TP left whole (FSDP over "dp" only) is on every TP rank
        grad = grad.to_local()
    else:
        copies = tp_width
    return grad.float().pow(2).sum() / copies


def clip_global_grad_norm_(params: list[nn.Parameter], max_norm: float, device: torch.device,
                           exclude: Iterable[nn.Parameter] = (), tp_width: int = 1) -> torch.Tensor:
    """Clip in place like ``torch.nn.utils.clip_grad_norm_`` on one process; returns the norm before
    clipping. ``exclude``: parameters whose gradient another rank counts (a tied copy);
    ``tp_width``: the TP group size of this rank's stage."""
    skip = {id(p) for p in exclude}
    total = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is not None and id(p) not in skip:
            total = total + _local_square_sum(p.grad, tp_width).to(device)
    dist.all_reduce(total)
    norm = total.sqrt()
    if math.isfinite(max_norm):
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in params:
            g = p.grad
            if g is not None:
                (g.to_local() if hasattr(g, "to_local") else g).mul_(coef.to(g.dtype))
    return norm
