"""Attention functions registered with transformers' ``AttentionInterface``.

Each has HF's signature ``fn(module, query, key, value, attention_mask, dropout, scaling,
**kwargs) -> (output (B, S, H, D), None)`` with ``query`` (B, H, S, D) and ``key``/``value``
(B, H_kv, S, D). None copies a model forward: HF calls them from its own attention modules.

Whenever the input is not a full multi-token forward with an amylum mask (decoding with a
KV cache, query length 1, or a model called without :func:`attention_inputs`), they fall
back to HF's SDPA with the mask HF built itself: the plain path.
"""

from __future__ import annotations

import functools

import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .decomposed import DecomposedMask, decomposed_attention

MASK_KWARG = "amylum_mask"  # kwarg that carries a DecomposedMask down to the attention function


def _is_full_forward(query: torch.Tensor, key: torch.Tensor, mask_len: int) -> bool:
    q_len, kv_len = query.shape[2], key.shape[2]
    if q_len == 1 or kv_len != q_len:
        return False  # decoding / cached prefill chunk: plain path
    if q_len != mask_len:
        raise ValueError(
            f"amylum attention mask is for sequence length {mask_len} but the layer sees {q_len} tokens; "
            f"build attention_inputs from the same batch that is fed to the model"
        )
    return True


def _plain(module, query, key, value, attention_mask, dropout, scaling, kwargs):
    kwargs.pop(MASK_KWARG, None)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def reference_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA with amylum's dense (B, 1, S, S) boolean mask (CPU-friendly; O(S²) mask memory)."""
    kwargs.pop(MASK_KWARG, None)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and query.shape[2] > 1:
        # HF's SDPA would silently slice a too-long mask; a mismatch means a mask from another batch.
        if tuple(attention_mask.shape[-2:]) != (query.shape[2], key.shape[2]):
            raise ValueError(
                f"attention mask covers {tuple(attention_mask.shape[-2:])} (query, key) positions but the layer "
                f"sees {(query.shape[2], key.shape[2])}; build attention_inputs from the batch fed to the model"
            )
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    # One compiled callable per process (compiled code, not batch state). dynamic=None: the
    # first new sequence length compiles a dynamic-shape kernel instead of one kernel per
    # length, which would soon exceed dynamo's recompile limit and silently fall back to the
    # unfused eager path (it materialises S² scores per head: out of memory at 16k).
    # On CPU the eager implementation is used: forward only, for tests.
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=None)


def run_flex(query, key, value, block_mask, scaling=None, kernel_options=None) -> torch.Tensor:
    """FlexAttention over (B, H, S, D) tensors; GQA handled by the kernel. Returns (B, H, S, D)."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = _compiled_flex() if query.is_cuda else flex_attention
    gqa = query.shape[1] != key.shape[1]
    return fn(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa, kernel_options=kernel_options)


def flex_attention_fn(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """FlexAttention with the BlockMask from :func:`attention_inputs`."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask) or not _is_full_forward(query, key, attention_mask.seq_lengths[0]):
        return _plain(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if dropout:
        raise ValueError("amylum's flex attention backend does not support attention dropout")
    out = run_flex(query, key, value, attention_mask, scaling=scaling, kernel_options=kwargs.get("amylum_kernel_options"))
    return out.transpose(1, 2).contiguous(), None


# The decomposed route calls flash kernels directly and does its own LSE merge in eager code;
# inside a compiled transformer block dynamo cannot trace it, so it runs as a graph break.
_decomposed_eager = torch.compiler.disable(decomposed_attention)


def decomposed_attention_fn(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Causal flash over each sample + flash over every segment's future keys, merged by LSE."""
    mask = kwargs.get(MASK_KWARG)
    q_len, kv_len = query.shape[2], key.shape[2]
    if not isinstance(mask, DecomposedMask):
        if q_len > 1 and q_len == kv_len:
            raise ValueError(
                "the amylum 'decomposed' attention backend needs the per-batch mask for multi-token forwards: "
                "pass **attention_inputs(batch, backend='decomposed') to the model"
            )
        return _plain(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if not _is_full_forward(query, key, mask.seq_len):
        return _plain(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if dropout:
        raise ValueError("amylum's decomposed attention backend does not support attention dropout")
    B, H, S, D = query.shape
    scale = scaling if scaling is not None else D**-0.5
    q = query.transpose(1, 2).reshape(B * S, H, D)
    k = key.transpose(1, 2).reshape(B * S, key.shape[1], D)
    v = value.transpose(1, 2).reshape(B * S, value.shape[1], value.shape[3])
    out = _decomposed_eager(q, k, v, mask, scale)
    return out.view(B, S, H, value.shape[3]), None
