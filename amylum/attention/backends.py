"""Attention functions registered with transformers' ``AttentionInterface``.

Each has HF's signature ``fn(module, query, key, value, attention_mask, dropout, scaling,
**kwargs) -> (output (B, S, H, D), None)`` with ``query`` (B, H, S, D) and ``key``/``value``
(B, H_kv, S, D). None copies a model forward: HF calls them from its own attention modules.

Whenever the input is not a full multi-token forward with an amylum mask (decoding with a
KV cache, query length 1, or a model called without :func:`attention_inputs`), they fall
back to HF's SDPA with the mask HF built itself: the plain path.
"""

from __future__ import annotations

import types

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


# How many (query length, key length) pairs get a kernel compiled for their exact lengths. A
# static-length kernel is 8-25 % faster than the dynamic-shape one on an H100 (bench/
# attention_tune.py: the dynamic kernel cannot assume the length divides the tile size and
# masks every load); a run with fixed-length packed rows uses one or two lengths.
STATIC_FLEX_LENGTHS = 16


# GQA with few key tiles: FlexAttention's dK/dV kernel runs one program per (row, KV head, key
# tile of 128), so 4 rows × 2 KV heads × 14 tiles (Qwen2-1.5B at 1,753 tokens) is 112 programs
# for an H100's 132 SMs, and its backward costs 4× its forward. Expanding K/V to the query heads
# multiplies the programs by the group size (the copy and the sum of dK/dV over each group are
# cheap at such lengths). bench/flex_gqa.py, H100: fwd+bwd 0.90× at 4 × 1,753 tokens, 0.79× at
# 2 × 3,506, 0.82× at 1 × 7,012 (110-112 programs). Only below this many programs per SM, where
# it was measured; longer rows fill the GPU without it.
EXPAND_KV_BELOW_PROGRAMS_PER_SM = 1.0


def _expand_kv(query: torch.Tensor, key: torch.Tensor) -> bool:
    if query.shape[1] == key.shape[1] or not query.is_cuda or not (query.requires_grad or key.requires_grad):
        return False
    programs = key.shape[0] * key.shape[1] * -(-key.shape[2] // 128)
    return programs < EXPAND_KV_BELOW_PROGRAMS_PER_SM * torch.cuda.get_device_properties(query.device).multi_processor_count


def _flex_call(query, key, value, block_mask, scale, enable_gqa, kernel_options, return_lse=False):
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    flash = (kernel_options or {}).get("BACKEND") == "FLASH"  # FA4 handles GQA itself, fills the GPU
    if enable_gqa and not flash and _expand_kv(query, key):
        group = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
        enable_gqa = False
    if return_lse:  # the LSE is differentiable (its gradient enters the backward kernel's row sums)
        out, aux = flex_attention(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                                  kernel_options=kernel_options, return_aux=AuxRequest(lse=True))
        return out, aux.lse
    return flex_attention(query, key, value, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa,
                          kernel_options=kernel_options)


class FlexKernels:
    """Compiled FlexAttention callables by (query length, key length).

    Holds compiled code only, keyed by shapes, never batch data (masks travel with batches).
    Dynamo keeps compiled entries, and counts recompiles, per code object: a code object of its
    own per length keeps that length's kernel static; ``dynamic=None`` lets a later change of
    another dimension (batch, heads) make only that dimension symbolic. Past ``static_limit``
    lengths, one dynamic-shape kernel serves the rest: compiling a static kernel per length
    would soon exceed dynamo's recompile limit and silently fall back to the unfused eager
    path (it materialises S² scores per head: out of memory at 16k).
    """

    def __init__(self, static_limit: int = STATIC_FLEX_LENGTHS) -> None:
        self.static_limit = static_limit
        self._static: dict[tuple[int, int], object] = {}
        self._dynamic = None

    def get(self, q_len: int, kv_len: int):
        fn = self._static.get((q_len, kv_len))
        if fn is None and len(self._static) < self.static_limit:
            code = _flex_call.__code__.replace(co_name=f"flex_attention_{q_len}x{kv_len}")
            fn = torch.compile(types.FunctionType(code, _flex_call.__globals__), dynamic=None)
            self._static[(q_len, kv_len)] = fn
        if fn is None:
            if self._dynamic is None:
                self._dynamic = torch.compile(_flex_call, dynamic=True)
            fn = self._dynamic
        return fn


_FLEX_KERNELS = FlexKernels()  # one per process: compiled code is what makes the second step fast


def run_flex(query, key, value, block_mask, scaling=None, kernel_options=None, return_lse: bool = False):
    """FlexAttention over (B, H, S, D) tensors; GQA handled by the kernel. Returns (B, H, S, D),
    and with ``return_lse`` also the (B, H, S) log-sum-exp of the scaled scores (natural log).

    On CUDA the kernel is compiled (static per sequence length for the first
    ``STATIC_FLEX_LENGTHS`` lengths, dynamic after), or traced into the caller's graph when
    called from a compiled block; on CPU the eager implementation runs (forward only, tests).
    """
    gqa = query.shape[1] != key.shape[1]
    if not query.is_cuda or torch.compiler.is_compiling():
        # CPU: eager. Inside a compiled block: the block's own compilation fuses the kernel.
        return _flex_call(query, key, value, block_mask, scaling, gqa, kernel_options, return_lse)
    fn = _FLEX_KERNELS.get(query.shape[2], key.shape[2])
    return fn(query, key, value, block_mask, scaling, gqa, kernel_options, return_lse)


def flex_attention_fn(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """FlexAttention with the BlockMask from :func:`attention_inputs`."""
    from torch.nn.attention.flex_attention import BlockMask

    if not isinstance(attention_mask, BlockMask) or not _is_full_forward(query, key, attention_mask.seq_lengths[0]):
        return _plain(module, query, key, value, attention_mask, dropout, scaling, kwargs)
    if dropout:
        raise ValueError("amylum's flex attention backend does not support attention dropout")
    out = run_flex(query, key, value, attention_mask, scaling=scaling, kernel_options=kwargs.get("amylum_kernel_options"))
    return out.transpose(1, 2).contiguous(), None


# FlexAttention can lower the same mask_mod and BlockMask to FlashAttention-4's CuTe kernels
# (wgmma + TMA on Hopper) instead of its own Triton ones. bench/flex_flash.py, H100, the VLM
# step's shape (4 × 1,769 tokens, 12/2 heads × 128): fwd+bwd 0.560 ms against 0.794 ms.
FLASH_KERNEL_OPTIONS = {"BACKEND": "FLASH"}


def flex_flash_attention_fn(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """:func:`flex_attention_fn` with FlashAttention-4's kernels on CUDA (package ``flash-attn-4``).

    On CPU it is the flex backend (eager FlexAttention): FA4 has no CPU kernels.
    """
    if query.is_cuda:
        kwargs["amylum_kernel_options"] = {**FLASH_KERNEL_OPTIONS, **(kwargs.get("amylum_kernel_options") or {})}
    return flex_attention_fn(module, query, key, value, attention_mask, dropout, scaling, **kwargs)


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
