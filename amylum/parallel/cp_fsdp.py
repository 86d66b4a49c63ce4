"""Context parallelism composed with FSDP2: a (dp, cp) mesh, gradients reduced over dp × cp.

Each DP replica trains on its own microbatch; inside a replica the CP ranks share that
microbatch and each computes the loss of its tokens (divided by the step's *global* target
count). Every rank's gradient is then a partial sum, and the full gradient is the sum over
all dp × cp ranks: FSDP2 shards parameters over the flattened ``dp_cp`` dimension and its
reduce-scatter (summing, see ``apply_fsdp``) does the CP reduction too, as torchtitan does,
so ``context.allreduce_gradients`` is not needed.

FSDP2 unshards its root group (embeddings, LM head, norms, projectors) in the root module's
forward; CP runs ``context.cp_forward`` rather than ``MultimodalLM.forward``, so the root is
:class:`CPStep`, a module whose forward is the CP step.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from amylum.parallel.fsdp import apply_fsdp

from .context import apply_cp, cp_forward


class CPStep(nn.Module):
    """``cp_forward`` of ``model`` as a module (the FSDP2 root under CP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch, shard, *, group=None, backend: str = "reference",
                num_items_in_batch: int | torch.Tensor | None = None, traffic=None):
        return cp_forward(self.model, batch, shard, group=group, backend=backend,
                          num_items_in_batch=num_items_in_batch, traffic=traffic)


def cp_dp_mesh(dp: int, cp: int, device_type: str = "cpu") -> DeviceMesh:
    """A 2-D mesh ("dp", "cp"); CP peers are adjacent ranks (rank = dp_index · cp + cp_index)."""
    return init_device_mesh(device_type, (dp, cp), mesh_dim_names=("dp", "cp"))


def apply_cp_fsdp(model: nn.Module, mesh: DeviceMesh, **fsdp_kwargs) -> CPStep:
    """Switch ``model``'s LLM to CP attention and shard it with FSDP2 over ``mesh``'s dp × cp ranks.

    Returns the :class:`CPStep` to call; run it with ``group=mesh["cp"].get_group()``.
    ``fsdp_kwargs`` go to ``apply_fsdp`` (gradients are summed unless told otherwise).
    """
    if mesh.mesh_dim_names is None or set(mesh.mesh_dim_names) != {"dp", "cp"}:
        raise ValueError(f"expected a mesh with dims ('dp', 'cp'), got {mesh.mesh_dim_names}")
    apply_cp(model)
    step = CPStep(model)
    apply_fsdp(model, mesh["dp", "cp"]._flatten("dp_cp"), root=step, **fsdp_kwargs)
    return step
