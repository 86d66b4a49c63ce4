"""Layer shapes of Cornstarch's model grid (public config values) and a tiny model, as data.

Configs are plain dicts with HF field names, so planning needs no transformers import; the same
dicts can be passed to ``transformers.<X>Config(**d)`` and give the same spec (tested).
Workload per sample (Cornstarch's PP harness): 1,024 text tokens, one 1280×720 image tiled to the
encoder's input size (or at native resolution for Pixtral/Qwen2-VL), 30 s of audio.
"""

from __future__ import annotations

from .configs import EncoderInput, model_spec_from_configs
from .spec import ModelSpec


def _llm(mt, h, n, heads, kv, ffn, vocab, **kw):
    return dict(model_type=mt, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=ffn, vocab_size=vocab, **kw)


def _vit(mt, h, n, heads, ffn, image, patch, **kw):
    return dict(model_type=mt, hidden_size=h, num_hidden_layers=n, num_attention_heads=heads,
                intermediate_size=ffn, image_size=image, patch_size=patch, **kw)


def _whisper(d, n, heads, ffn, mels=80):
    return dict(model_type="whisper", d_model=d, encoder_layers=n, encoder_attention_heads=heads,
                encoder_ffn_dim=ffn, max_source_positions=1500, num_mel_bins=mels)


LLMS = {
    "llama-3.1-8b": _llm("llama", 4096, 32, 32, 8, 14336, 128256),
    "llama-3.1-70b": _llm("llama", 8192, 80, 64, 8, 28672, 128256),
    "qwen2.5-72b": _llm("qwen2", 8192, 80, 64, 8, 29568, 152064),
    "qwen2.5-14b": _llm("qwen2", 5120, 48, 40, 8, 13824, 152064),
    "gemma-2-27b": _llm("gemma2", 4608, 46, 32, 16, 36864, 256000, head_dim=128),
    "phi-3-small": _llm("llama", 4096, 32, 32, 8, 14336, 100352),  # vocab marked (?) in the source table
    "internlm2.5-20b": _llm("internlm2", 6144, 48, 48, 8, 16384, 92544),
    "mixtral-8x7b": _llm("mixtral", 4096, 32, 32, 8, 14336, 32000, num_local_experts=8, num_experts_per_tok=2),
    "mistral-7b": _llm("mistral", 4096, 32, 32, 8, 14336, 32768),
    "tiny-llm": _llm("llama", 64, 4, 4, 2, 128, 256),
}

# (config, items per sample, tokens per item override, projector merge)
ENCODERS = {
    "pixtral-400m": (_vit("pixtral", 1024, 24, 16, 4096, 1024, 16, head_dim=64), 1, 64 * 36, 1),
    "internvit-6b": (_vit("vit", 3200, 45, 25, 12800, 448, 14), 6, None, 4),
    "vit-22b": (_vit("vit", 6144, 48, 48, 24576, 224, 14), 24, None, 1),
    "eva-clip-18b": (_vit("vit", 5120, 48, 40, 13696, 224, 14), 24, None, 1),
    "siglip-so400m": (_vit("siglip_vision_model", 1152, 27, 16, 4304, 384, 14), 8, None, 1),
    "qwen2-vl-vision": (_vit("vit", 1280, 32, 16, 5120, 1288, 14), 1, 92 * 52, 4),
    "whisper-small": (_whisper(768, 12, 12, 3072), 1, None, 1),
    "whisper-medium": (_whisper(1024, 24, 16, 4096), 1, None, 1),
    "whisper-large-v3": (_whisper(1280, 32, 20, 5120, mels=128), 1, None, 1),
    "qwen2-audio-encoder": (_whisper(1280, 32, 20, 5120, mels=128), 1, None, 2),
    "tiny-vision": (_vit("siglip_vision_model", 32, 2, 4, 64, 32, 8), 1, None, 1),
    "tiny-audio": (dict(_whisper(32, 2, 4, 64, mels=8), max_source_positions=16), 1, None, 1),
}

GRID = {
    "VLM-small": ("llama-3.1-8b", {"vision": "pixtral-400m"}),
    "VLM-medium": ("gemma-2-27b", {"vision": "internvit-6b"}),
    "VLM-large": ("qwen2.5-72b", {"vision": "vit-22b"}),
    "ALM-small": ("phi-3-small", {"audio": "whisper-small"}),
    "ALM-medium": ("internlm2.5-20b", {"audio": "whisper-medium"}),
    "ALM-large": ("mixtral-8x7b", {"audio": "qwen2-audio-encoder"}),
    "VALM-small": ("mistral-7b", {"vision": "siglip-so400m", "audio": "whisper-small"}),
    "VALM-medium": ("qwen2.5-14b", {"vision": "qwen2-vl-vision", "audio": "whisper-medium"}),
    "VALM-large": ("llama-3.1-70b", {"vision": "eva-clip-18b", "audio": "whisper-large-v3"}),
    "tiny": ("tiny-llm", {"vision": "tiny-vision", "audio": "tiny-audio"}),
}


def preset_names() -> list[str]:
    return list(GRID)


def preset_configs(name: str):
    if name not in GRID:
        raise ValueError(f"unknown preset {name!r}; presets: {preset_names()}")
    llm, encs = GRID[name]
    enc_inputs = {}
    for branch, enc in encs.items():
        cfg, items, per_item, merge = ENCODERS[enc]
        enc_inputs[branch] = EncoderInput(cfg, items=items, tokens_per_item=per_item, merge=merge)
    return LLMS[llm], enc_inputs


def preset_model(name: str, text_tokens: int | None = None) -> ModelSpec:
    llm, encs = preset_configs(name)
    if text_tokens is None:
        text_tokens = 16 if name == "tiny" else 1024
    return model_spec_from_configs(name, llm, encs, text_tokens=text_tokens)
