"""ModelSpec from HF config objects (or plain dicts with the same fields), no weights needed.

Supported shapes: llama-like decoders (llama, qwen2, mistral, gemma2, mixtral, phi3, internlm2, …),
ViT-like encoders (siglip, clip, pixtral, generic "vit"), and the Whisper encoder. A config is read
through its public fields, so any config with the same field names works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import layers as L
from .spec import BranchSpec, ModelSpec

LLAMA_LIKE = {"llama", "qwen2", "mistral", "gemma", "gemma2", "mixtral", "phi3", "internlm2", "qwen3", "olmo2"}
VIT_LIKE = {"siglip_vision_model", "clip_vision_model", "pixtral", "vit", "siglip", "clip"}
WHISPER_LIKE = {"whisper", "whisper_encoder", "qwen2_audio_encoder"}


def _get(cfg, *names, default=None):
    for n in names:
        v = cfg.get(n) if isinstance(cfg, dict) else getattr(cfg, n, None)
        if v is not None:
            return v
    if default is not None:
        return default
    raise ValueError(f"config {_type(cfg)!r} lacks any of the fields {names}")


def _type(cfg) -> str:
    return cfg.get("model_type", "?") if isinstance(cfg, dict) else getattr(cfg, "model_type", type(cfg).__name__)


@dataclass(frozen=True)
class EncoderInput:
    """How one modality reaches the LLM.

    ``items`` per sample (image tiles, audio clips); ``tokens_per_item`` overrides what the config
    implies; ``merge`` tokens are concatenated by the projector (pixel shuffle 0.5 → 4, Qwen2-VL 2×2 → 4,
    Qwen2-Audio pooling → 2).
    """

    config: object
    items: int = 1
    tokens_per_item: int | None = None
    merge: int = 1


def encoder_tokens_per_item(cfg) -> int:
    t = _type(cfg)
    if t in WHISPER_LIKE:
        return int(_get(cfg, "max_source_positions"))
    n = (int(_get(cfg, "image_size")) // int(_get(cfg, "patch_size"))) ** 2
    return n + 1 if t in ("clip_vision_model", "clip") else n


def llm_layers(cfg, seq: int, module: str = "llm") -> list:
    t = _type(cfg)
    if t not in LLAMA_LIKE:
        raise ValueError(f"LLM config of type {t!r} is not a supported decoder; supported: {sorted(LLAMA_LIKE)}")
    h = int(_get(cfg, "hidden_size"))
    heads = int(_get(cfg, "num_attention_heads"))
    kv = int(_get(cfg, "num_key_value_heads", default=heads))
    hd = int(_get(cfg, "head_dim", default=h // heads))
    ffn = int(_get(cfg, "intermediate_size"))
    n = int(_get(cfg, "num_hidden_layers"))
    vocab = int(_get(cfg, "vocab_size"))
    experts = int(_get(cfg, "num_local_experts", default=1))
    top_k = int(_get(cfg, "num_experts_per_tok", default=1)) if experts > 1 else 1
    bias = bool(_get(cfg, "attention_bias", default=False)) or t == "qwen2"
    out = [L.embedding(f"{module}.embed", module, vocab=vocab, hidden=h, tokens=seq)]
    for i in range(n):
        out.append(L.transformer_layer(f"{module}.layers.{i}", module, f"{t}.decoder", hidden=h, heads=heads,
                                       kv_heads=kv, head_dim=hd, ffn=ffn, seq=seq, tokens=seq, causal=True,
                                       gated=True, bias=bias, experts=experts, top_k=top_k))
    out.append(L.lm_head(f"{module}.head", module, vocab=vocab, hidden=h, tokens=seq))
    return out


def encoder_hidden(cfg) -> int:
    return int(_get(cfg, "d_model", "hidden_size", "embed_dim"))


def branch_layers(name: str, enc: EncoderInput, llm_hidden: int) -> tuple[list, int]:
    """Encoder + projector layers of one branch, and the number of LLM tokens it yields per sample."""
    cfg, t = enc.config, _type(enc.config)
    module = f"{name}.encoder"
    per_item = enc.tokens_per_item or encoder_tokens_per_item(cfg)
    tokens = per_item * enc.items
    h = encoder_hidden(cfg)
    out = []
    if t in WHISPER_LIKE:
        heads = int(_get(cfg, "encoder_attention_heads", "num_attention_heads"))
        ffn = int(_get(cfg, "encoder_ffn_dim", "intermediate_size"))
        n = int(_get(cfg, "encoder_layers", "num_hidden_layers"))
        mels = int(_get(cfg, "num_mel_bins", default=80))
        # two k=3 convs, the second with stride 2: 2 input frames per output token through conv1
        out.append(L.linear_in(f"{module}.conv", module, "whisper.conv", in_dim=2 * 3 * mels + 3 * h,
                               out_dim=h, tokens=tokens))
        for i in range(n):
            out.append(L.transformer_layer(f"{module}.layers.{i}", module, "whisper.layer", hidden=h, heads=heads,
                                           kv_heads=heads, head_dim=h // heads, ffn=ffn, seq=per_item,
                                           tokens=tokens, causal=False, gated=False, bias=True))
    elif t in VIT_LIKE:
        heads = int(_get(cfg, "num_attention_heads"))
        ffn = int(_get(cfg, "intermediate_size"))
        n = int(_get(cfg, "num_hidden_layers"))
        hd = int(_get(cfg, "head_dim", default=h // heads))
        patch = int(_get(cfg, "patch_size"))
        ch = int(_get(cfg, "num_channels", default=3))
        gated = t == "pixtral" or bool(_get(cfg, "gated_mlp", default=False))
        out.append(L.linear_in(f"{module}.patch_embed", module, "vit.patch_embed", in_dim=ch * patch * patch,
                               out_dim=h, tokens=tokens))
        for i in range(n):
            out.append(L.transformer_layer(f"{module}.layers.{i}", module, f"{t}.layer", hidden=h, heads=heads,
                                           kv_heads=heads, head_dim=hd, ffn=ffn, seq=per_item, tokens=tokens,
                                           causal=False, gated=gated, bias=not gated))
    else:
        raise ValueError(f"encoder config of type {t!r} is not supported; supported: "
                         f"{sorted(VIT_LIKE | WHISPER_LIKE)}")
    if enc.merge < 1:
        raise ValueError(f"branch {name}: merge must be >= 1, got {enc.merge}")
    llm_tokens = math.ceil(tokens / enc.merge)
    out.append(L.mlp_projector(f"{name}.projector", f"{name}.projector", in_dim=h * enc.merge,
                               out_dim=llm_hidden, tokens=llm_tokens))
    return out, llm_tokens


def model_spec_from_configs(name: str, llm_config, encoders: dict[str, EncoderInput] | None = None,
                            text_tokens: int = 1024) -> ModelSpec:
    """Describe a composed model from configs alone: the LLM sees text plus every branch's tokens."""
    encoders = encoders or {}
    llm_h = int(_get(llm_config, "hidden_size"))
    branches, mm_tokens = [], 0
    for bname, enc in encoders.items():
        if not isinstance(enc, EncoderInput):
            enc = EncoderInput(enc)
        layers, n = branch_layers(bname, enc, llm_h)
        branches.append(BranchSpec(bname, tuple(layers)))
        mm_tokens += n
    return ModelSpec(name=name, llm=tuple(llm_layers(llm_config, text_tokens + mm_tokens)),
                     branches=tuple(branches))
