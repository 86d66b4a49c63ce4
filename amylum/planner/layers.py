"""Analytic per-layer figures (parameters, FLOPs, activation bytes) from layer shapes.

FLOPs count 2 per multiply-add. Attention's score and value products scale with the sequence
length, so they are computed for the sequence a layer actually sees (a tile's patches for a ViT,
the packed sample for the LLM); causal attention does half the work on average.
Activation bytes assume flash attention (no s×s scores kept) and bf16 tensors.
"""

from __future__ import annotations

from .spec import DTYPE_BYTES, LayerSpec

B = DTYPE_BYTES


def transformer_layer(name: str, module: str, kind: str, *, hidden: int, heads: int, kv_heads: int,
                      head_dim: int, ffn: int, seq: int, tokens: int, causal: bool, gated: bool,
                      bias: bool = False, experts: int = 1, top_k: int = 1) -> LayerSpec:
    """A pre-norm transformer block (llama-like when ``gated``, ViT/Whisper-like otherwise).

    ``seq`` is the attention length, ``tokens`` the tokens per sample (tiles × seq for a tiled encoder).
    """
    q, kv = heads * head_dim, kv_heads * head_dim
    attn_w = hidden * q + 2 * hidden * kv + q * hidden
    mlp_mats = 3 if gated else 2
    mlp_w = mlp_mats * hidden * ffn
    router = hidden * experts if experts > 1 else 0
    bias_p = (q + 2 * kv + hidden + (2 * ffn if gated else ffn) + hidden) if bias else 0
    norms = 2 * hidden if gated else 4 * hidden  # two RMSNorms (weight) or LayerNorms (weight + bias)
    params = attn_w + mlp_w * experts + router + bias_p + norms
    linear = 2 * (attn_w + mlp_w * top_k + router)  # per token, only the routed experts run
    s_eff = seq / 2 if causal else seq
    attn = 4 * q * s_eff  # QKᵀ and PV
    mlp_act = ffn * top_k
    # tensors alive until backward, per token (see module docstring of LayerSpec for the split)
    linear_inputs = 2 * hidden + q + mlp_act  # norm outputs, attention output, activation output
    nonlinear_inputs = 2 * hidden + q + 2 * kv + q + (2 if gated else 1) * mlp_act
    shared = q  # attention output is both flash-backward input and o_proj input
    return LayerSpec(
        name=name, module=module, kind=kind, params=int(params), tokens=tokens, hidden=hidden,
        fwd_flops=linear + attn, igrad_flops=linear + 2 * attn, wgrad_flops=linear,
        act_bytes=B * (linear_inputs + nonlinear_inputs - shared),
        act_bytes_igrad=B * nonlinear_inputs,
        out_bytes=B * hidden * tokens, kv_bytes=B * 2 * kv,
    )


def embedding(name: str, module: str, *, vocab: int, hidden: int, tokens: int) -> LayerSpec:
    # a gather: no FLOPs worth counting; weight grads are a scatter-add of the output grads
    return LayerSpec(name=name, module=module, kind="embedding", params=vocab * hidden, tokens=tokens,
                     hidden=hidden, fwd_flops=0.0, igrad_flops=0.0, wgrad_flops=0.0,
                     act_bytes=0.0, act_bytes_igrad=0.0, out_bytes=B * hidden * tokens)


def lm_head(name: str, module: str, *, vocab: int, hidden: int, tokens: int) -> LayerSpec:
    # final norm + vocabulary projection + cross-entropy; fp32 logits dominate the activations
    mm = 2 * hidden * vocab
    return LayerSpec(name=name, module=module, kind="lm_head", params=vocab * hidden + hidden, tokens=tokens,
                     hidden=hidden, fwd_flops=mm, igrad_flops=mm, wgrad_flops=mm,
                     act_bytes=B * 2 * hidden + 4 * vocab, act_bytes_igrad=B * hidden + 4 * vocab,
                     out_bytes=4.0)


def linear_in(name: str, module: str, kind: str, *, in_dim: int, out_dim: int, tokens: int) -> LayerSpec:
    """A per-token linear map (patch embedding, conv front-end approximated as its matmul)."""
    return LayerSpec(name=name, module=module, kind=kind, params=in_dim * out_dim + out_dim, tokens=tokens,
                     hidden=out_dim, fwd_flops=2 * in_dim * out_dim, igrad_flops=0.0,
                     wgrad_flops=2 * in_dim * out_dim, act_bytes=B * in_dim, act_bytes_igrad=0.0,
                     out_bytes=B * out_dim * tokens)


def mlp_projector(name: str, module: str, *, in_dim: int, out_dim: int, tokens: int) -> LayerSpec:
    """Linear → GELU → Linear from encoder width (after any token merge) to LLM width."""
    w = in_dim * out_dim + out_dim * out_dim
    return LayerSpec(name=name, module=module, kind="projector", params=w + 2 * out_dim, tokens=tokens,
                     hidden=out_dim, fwd_flops=2 * w, igrad_flops=2 * w, wgrad_flops=2 * w,
                     act_bytes=B * (in_dim + 2 * out_dim), act_bytes_igrad=B * out_dim,
                     out_bytes=B * out_dim * tokens)
