"""Hooking amylum's attention into HF causal LMs: ``setup_llm_attention`` + ``attention_inputs``.

The model calls ``setup_llm_attention(llm, backend)`` once; it registers amylum's functions
with transformers' ``AttentionInterface`` (and, for decoding, HF's own SDPA mask builder with
``AttentionMaskInterface``) and switches the LLM to them. Every forward then passes
``**attention_inputs(batch, backend=...)`` to ``llm(inputs_embeds=..., position_ids=...)``:

* ``reference``  → ``{"attention_mask": (B, 1, S, S) bool}``; HF passes a 4D mask through
  untouched to every layer.
* ``flex``       → ``{"attention_mask": BlockMask}``, likewise passed through.
* ``flex-flash`` → the same ``BlockMask``; the kernels are FlashAttention-4's (package
  ``flash-attn-4``) instead of FlexAttention's Triton ones.
* ``decomposed`` → ``{"attention_mask": None, "amylum_mask": DecomposedMask}``; HF forwards
  extra kwargs down to the attention function. HF builds no mask for multi-token forwards.
* ``fast``       → the route the GPU benchmark picked (currently ``flex``).
* ``hf``         → the model's own implementation: plain causal inputs (a 2D padding mask,
  or nothing for packed rows, whose restarting ``position_ids`` HF detects itself).

The mask is rebuilt from each batch: nothing about a batch outlives it (a device batch keeps
its own mask copy in its ``BatchIndex``).
"""

from __future__ import annotations

import types

import torch

from .backends import MASK_KWARG, decomposed_attention_fn, flex_attention_fn, flex_flash_attention_fn, reference_attention
from .block_sparse import flex_block_mask
from .decomposed import decomposed_mask
from .dense import dense_mask
from .mask import mask_spec

BACKENDS = ("reference", "flex", "flex-flash", "decomposed", "fast", "hf")
IMPLEMENTATIONS = {
    "reference": ("amylum_reference", reference_attention),
    "flex": ("amylum_flex", flex_attention_fn),
    "flex-flash": ("amylum_flex_cute", flex_flash_attention_fn),  # HF treats any name with "flash" as its own flash-attn
    "decomposed": ("amylum_decomposed", decomposed_attention_fn),
}
FLASH_INSTALL = "pip install --pre 'flash-attn-4[cu13]'  (or flash-attn-4 for CUDA 12)"


def flash_available() -> bool:
    """FlashAttention-4's CuTe kernels can serve FlexAttention here: the package imports and a
    Hopper or Blackwell GPU (compute capability 9.x or 10.x) is visible."""
    import importlib.util

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10):
        return False
    try:
        return importlib.util.find_spec("flash_attn.cute") is not None
    except ImportError:  # a "flash_attn" without the cute subpackage (FlashAttention 2)
        return False


FAST_ROUTE = "flex"  # bench/attention.py: flex ≥ decomposed everywhere. "flex-flash" is faster on
# Hopper (bench/gpu_step.py) but needs a pre-release package and was measured only in the
# benchmark's path (bf16 weights, compiled blocks), so it is chosen explicitly, not by "fast".


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    return FAST_ROUTE if backend == "fast" else backend


def _decode_only_sdpa_mask(*args, q_length: int, kv_length: int, q_offset=0, **kwargs):
    """HF mask builder for the decomposed backend: only decoding needs HF's mask.

    Multi-token forwards carry amylum's own O(S) mask, so building HF's (possibly O(S²),
    e.g. for packed rows) mask there would only cost time and memory.
    """
    from transformers.masking_utils import sdpa_mask

    if q_length > 1 and q_length == kv_length and isinstance(q_offset, int) and q_offset == 0:
        return None
    return sdpa_mask(*args, q_length=q_length, kv_length=kv_length, q_offset=q_offset, **kwargs)


def register_attention() -> None:
    """Register amylum's attention functions with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for backend, (name, fn) in IMPLEMENTATIONS.items():
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, _decode_only_sdpa_mask if backend == "decomposed" else sdpa_mask)


def setup_llm_attention(llm, backend: str = "reference") -> None:
    """Switch an HF causal LM to amylum's attention ``backend`` ("hf" leaves it untouched)."""
    backend = resolve_backend(backend)
    if backend == "hf":
        return
    if backend == "flex-flash" and torch.cuda.is_available() and not flash_available():
        raise ValueError(
            "attention backend 'flex-flash' needs FlashAttention-4 (CuTe DSL) on a Hopper or Blackwell GPU: "
            f"{FLASH_INSTALL}; or use backend 'flex'"
        )
    register_attention()
    name = IMPLEMENTATIONS[backend][0]
    if hasattr(llm, "set_attn_implementation"):
        llm.set_attn_implementation(name)
    elif hasattr(llm, "config"):
        llm.config._attn_implementation = name
    else:
        raise TypeError(f"{type(llm).__name__} is not an HF model (no set_attn_implementation or config)")
    got = getattr(getattr(llm, "config", None), "_attn_implementation", name)
    if got != name:
        raise RuntimeError(f"{type(llm).__name__} kept attention implementation {got!r} instead of {name!r}")


def _host_mask_spec(batch, mode: str):
    """The mask built and validated on the host from the ids a device batch keeps there (its
    ``BatchIndex``), then copied asynchronously: on the device, validation would read back several
    values per step and the GPU would idle while the host prepares the next launches.

    The device copy stays with the batch's index (``index.mask_specs``): a batch run twice (the
    FLOP count, a CUDA graph's warm-up and capture) copies its mask once, and a captured step
    reads it as a static input that the graph runner refreshes for each new batch."""
    index = getattr(batch, "index", None)
    host = getattr(index, "host_sample_ids", None)
    if host is None or batch.sample_ids.device.type == "cpu" or host.shape != batch.sample_ids.shape:
        return None
    kept = index.mask_specs.get(mode)
    if kept is not None and kept.lo.device == batch.sample_ids.device and kept.shape == tuple(host.shape):
        return kept
    ids = types.SimpleNamespace(sample_ids=host, segment_ids=index.host_segment_ids)
    spec = mask_spec(ids, mode).to(batch.sample_ids.device, non_blocking=True)
    index.mask_specs[mode] = spec
    return spec


def attention_inputs(batch_or_tensors, *, mode: str = "multimodal", backend: str = "reference", **options) -> dict:
    """Keyword arguments for ``llm(inputs_embeds=..., position_ids=..., **kwargs)`` for one batch.

    ``batch_or_tensors``: a MultimodalBatch or any object with (B, S) ``sample_ids`` and
    ``segment_ids``. Query length 1 (decoding) returns ``{}``: the plain path with HF's own mask.
    ``options``: ``block_size`` for flex.
    """
    backend = resolve_backend(backend)
    sample_ids = batch_or_tensors.sample_ids
    if sample_ids.dim() != 2:
        raise ValueError(f"sample_ids must be (batch, seq), got shape {tuple(sample_ids.shape)}")
    if sample_ids.shape[1] == 1:
        return {}
    if backend == "hf":
        packed = bool((sample_ids.amax(dim=1) > 0).any())
        return {} if packed else {"attention_mask": (sample_ids >= 0).long()}
    if backend == "reference":
        return {"attention_mask": dense_mask(batch_or_tensors, mode)[:, None]}
    spec = _host_mask_spec(batch_or_tensors, mode)
    if spec is None:
        spec = mask_spec(batch_or_tensors, mode)
    if backend in ("flex", "flex-flash"):  # one mask, two kernels
        return {"attention_mask": flex_block_mask(spec, options.get("block_size", 128))}
    return {"attention_mask": None, MASK_KWARG: decomposed_mask(spec)}
