"""Per-block transformations applied to a composed model from outside (DESIGN §4.1).

The repeated blocks of every component are found through the model's own layer lists (no
per-family code), then compiled or checkpointed one block at a time: compiling per block
keeps compile time proportional to one layer, and lets HF's Python-level control flow
between blocks run eagerly.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def find_layer_list(module: nn.Module) -> nn.ModuleList | None:
    """The longest ``nn.ModuleList`` of same-class modules inside ``module`` (its transformer blocks)."""
    best: nn.ModuleList | None = None
    for sub in module.modules():
        if isinstance(sub, nn.ModuleList) and len(sub) > 0:
            if len({type(m) for m in sub}) == 1 and (best is None or len(sub) > len(best)):
                best = sub
    return best


def component_blocks(model: nn.Module) -> Iterator[tuple[str, nn.ModuleList]]:
    """(component name, its block list) for the LLM and every encoder of a MultimodalLM."""
    # A pipeline's encoder stage holds no LLM.
    llm_blocks = find_layer_list(model.llm) if getattr(model, "llm", None) is not None else None
    if llm_blocks is not None:
        yield "llm", llm_blocks
    for name, branch in model.encoders.items():
        blocks = find_layer_list(branch.encoder)
        if blocks is not None:
            yield name, blocks


def _frozen_cuda_encoder(model: nn.Module, name: str) -> nn.Module | None:
    """Encoder ``name`` of ``model`` if it has parameters, none trainable, all on a CUDA device."""
    encoders = getattr(model, "encoders", {})
    branch = encoders[name] if name != "llm" and name in encoders else None
    params = list(branch.encoder.parameters()) if branch is not None else []
    if params and not any(p.requires_grad for p in params) and all(p.is_cuda for p in params):
        return branch.encoder
    return None


def compile_blocks(model: nn.Module, *, components: tuple[str, ...] | None = None, frozen_graphs: bool = False,
                   merge_matmuls: bool = False, **compile_kwargs) -> int:
    """``torch.compile`` every block in place (``nn.Module.compile``); returns how many modules were compiled.

    With ``frozen_graphs`` (and no mode or options chosen by the caller), a frozen encoder on a
    CUDA device is compiled whole as one CUDA graph (``mode="reduce-overhead"``) instead of
    block by block: it runs without autograd at a fixed input shape, so its forward replays as
    one launch. Why: with FlashAttention-4 kernels the VLM step on one H100 is bound by host
    time (bench/gpu_profile.py: 136 ms of kernels in a 144-150 ms step), and SigLIP-so400m's 27
    compiled blocks took more host time than GPU time. Whole, not per block: between graphs
    of a no-grad forward, each replay may reuse the memory of the previous graph's outputs.
    The encoder's output lives in the graph's pool until the next replay, so the encoder
    branch is told to copy it (``ModalityEncoder.output_in_graph_pool``) before the projector
    keeps it for backward; an encoder not replayed as a graph is not copied.
    Off by default: it trained correctly in bench/gpu_step.py on an H200, but its effect on
    step time was not measured against the per-block compile, and `amylum train` (whose FLOP
    count runs the model under a dispatch mode) has not run with it.

    With ``merge_matmuls`` each block's compiled graph gets amylum's matmul-merging pass
    (``parallel/gemm_merge.py``: a GQA block's q/k/v projections, their weight gradients and
    their input gradient, as one GEMM each); it cannot be combined with a ``mode``.
    """
    if merge_matmuls:
        if "mode" in compile_kwargs:
            raise ValueError("merge_matmuls adds an inductor option, which torch.compile refuses with a mode")
        from amylum.parallel.gemm_merge import MergeSharedOperandMatmuls

        options = dict(compile_kwargs.pop("options", None) or {})
        options["post_grad_custom_post_pass"] = MergeSharedOperandMatmuls()
        compile_kwargs["options"] = options
    count = 0
    for name, blocks in component_blocks(model):
        if components is not None and name not in components:
            continue
        whole = _frozen_cuda_encoder(model, name) if frozen_graphs and "mode" not in compile_kwargs else None
        if whole is not None:
            if "options" in compile_kwargs:
                raise ValueError("frozen_graphs compiles with mode='reduce-overhead', which torch.compile refuses "
                                 "together with options (merge_matmuls adds one): choose one of them")
            whole.compile(mode="reduce-overhead", **compile_kwargs)
            model.encoders[name].output_in_graph_pool = True
            count += 1
            continue
        for block in blocks:
            block.compile(**compile_kwargs)
            count += 1
    return count


class _Checkpointed(nn.Module):
    """Recompute a block's activations in backward instead of storing them."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # HF code reads attributes such as ``attention_type`` off its layers
            return getattr(self.block, name)


def checkpoint_blocks(model: nn.Module, *, every: int = 1, component: str = "llm") -> int:
    """Wrap every ``every``-th block of ``component`` in activation checkpointing.

    ``every=1`` checkpoints all blocks (least memory); larger values trade memory for speed
    (selective checkpointing). Returns the number of wrapped blocks.
    """
    if every < 1:
        raise ValueError("every must be >= 1")
    for name, blocks in component_blocks(model):
        if name != component:
            continue
        wrapped = 0
        for i in range(0, len(blocks), every):
            if not isinstance(blocks[i], _Checkpointed):
                blocks[i] = _Checkpointed(blocks[i])
                wrapped += 1
        return wrapped
    raise ValueError(f"no block list found for component {component!r}")
