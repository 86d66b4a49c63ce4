"""Data parallelism with FSDP2: ``fully_shard`` per block, then the root.

Blocks are found through each component's own layer list (``parallel/blocks.py``). The root
group holds everything outside the blocks (embeddings, LM head, norms, projectors, patch
embeddings) and is unsharded by the MultimodalLM's own forward, which is why the components
are not wrapped as units: the fused loss calls the LLM's decoder and head directly, not the
LLM's forward.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from amylum.parallel.blocks import component_blocks


def apply_fsdp(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = torch.float32,
    reshard_after_forward: bool = True,
    sum_gradients: bool = True,
    root: nn.Module | None = None,
) -> nn.Module:
    """Shard ``model`` (a MultimodalLM) over ``mesh`` (1-D: FSDP; 2-D (replicate, shard): HSDP).

    ``root``: the module whose forward the caller invokes, if not ``model`` itself (a pipeline
    stage wrapping a pruned MultimodalLM): the remaining parameters are grouped there, so they
    are gathered when that forward runs.

    ``sum_gradients``: reduce gradients by sum instead of FSDP's default mean. amylum's loss
    is a sum over tokens divided by the *global* target-token count (``num_items_in_batch``),
    so summing across ranks gives exactly the single-process gradient; averaging again would
    dilute it by the world size (the "gradient dilution" reported for Megatron encoders).
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for _name, blocks in component_blocks(model):
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    root = model if root is None else root
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    if sum_gradients:
        for module in root.modules():
            if hasattr(module, "set_gradient_divide_factor"):
                module.set_gradient_divide_factor(1.0)
                # Plain SUM collectives: gloo has no PREMUL_SUM, and NCCL moves SUM zero-copy.
                module.set_force_sum_reduction_for_comms(True)
    return root
