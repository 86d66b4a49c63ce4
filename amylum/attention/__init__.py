"""Multimodal attention masks and backends (DESIGN §5).

Public API::

    setup_llm_attention(llm, backend="reference")      # once, at model construction
    llm(inputs_embeds=..., position_ids=..., **attention_inputs(batch, mode="multimodal", backend=...))

Backends: "reference" (SDPA + dense bool mask; CPU), "flex" (FlexAttention + BlockMask),
"flex-flash" (the same, on FlashAttention-4's kernels),
"decomposed" (flash causal + per-segment flash, merged by log-sum-exp), "fast" (the route the
GPU benchmark picked), "hf" (the model's own attention, plain causal). See docs/attention.md.
"""

from .block_sparse import flex_block_mask, tile_classes
from .decomposed import DecomposedMask, decomposed_attention, decomposed_mask
from .dense import dense_from_spec, dense_mask
from .integration import BACKENDS, attention_inputs, register_attention, resolve_backend, setup_llm_attention
from .mask import MODES, MaskSpec, mask_spec

__all__ = [
    "BACKENDS",
    "MODES",
    "DecomposedMask",
    "MaskSpec",
    "attention_inputs",
    "decomposed_attention",
    "decomposed_mask",
    "dense_from_spec",
    "dense_mask",
    "flex_block_mask",
    "mask_spec",
    "register_attention",
    "resolve_backend",
    "setup_llm_attention",
    "tile_classes",
]
