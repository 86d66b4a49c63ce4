"""Model presets built from configs alone (random weights, no downloads).

Tiny presets are for tests and the CPU demo. Real-size presets reproduce the layer shapes of
public checkpoints, so the planners and benchmarks see true sizes; build them on the
``meta`` device to count or plan without allocating memory. Any component can instead be
loaded from a local ``from_pretrained`` path (see ``build_from_parts``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    SiglipVisionConfig,
    SiglipVisionModel,
    WhisperConfig,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from amylum.models.encoder import ModalityEncoder
from amylum.models.multimodal_lm import MultimodalLM


@dataclass(frozen=True)
class BranchPreset:
    config: Callable[[], PretrainedConfig]
    projector: str = "mlp"
    token_reduction: int = 1
    feature_layer: int = -1


@dataclass(frozen=True)
class Preset:
    description: str
    llm: Callable[[int | None], PretrainedConfig]  # vocab size override → config
    encoders: dict[str, BranchPreset] = field(default_factory=dict)


# ---- component configs (public layer shapes) ---------------------------------------------
def _siglip_so400m() -> SiglipVisionConfig:
    # google/siglip-so400m-patch14-384; the MAP pooling head is unused by an MLLM, so it is not built.
    return SiglipVisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        image_size=384, patch_size=14, vision_use_head=False,
    )


def _clip_l336() -> CLIPVisionConfig:
    # openai/clip-vit-large-patch14-336 vision tower
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    )


def _whisper_small() -> WhisperConfig:
    return WhisperConfig(
        d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072,
        decoder_layers=12, decoder_attention_heads=12, decoder_ffn_dim=3072,
        num_mel_bins=80, max_source_positions=1500,
    )


def _qwen2_1_5b(vocab: int | None) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab or 151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
        tie_word_embeddings=True, rms_norm_eps=1e-6,
    )


def _llama3_8b(vocab: int | None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab or 128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )


def _mistral_7b(vocab: int | None) -> MistralConfig:
    return MistralConfig(
        vocab_size=vocab or 32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rope_theta=10000.0,
        sliding_window=None, tie_word_embeddings=False,
    )


# ---- tiny components (tests, CPU demo) ----------------------------------------------------
def _tiny_siglip() -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=16, patch_size=4, vision_use_head=False,
    )


def _tiny_whisper() -> WhisperConfig:
    # 100 positions = 200 mel frames = 2 s windows: enough for the demo's tone clips.
    return WhisperConfig(
        d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=128,
        num_mel_bins=80, max_source_positions=100,
    )


def _tiny_llama(vocab: int | None) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab or 512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )


def _tiny_qwen2(vocab: int | None) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=vocab or 512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )


PRESETS: dict[str, Preset] = {
    "tiny-vlm": Preset("tiny SigLIP (16×16 images, 16 tokens) + MLP + tiny Llama", _tiny_llama, {"vision": BranchPreset(_tiny_siglip)}),
    "tiny-valm": Preset(
        "tiny SigLIP + tiny Whisper encoder + tiny Qwen2",
        _tiny_qwen2,
        {"vision": BranchPreset(_tiny_siglip), "audio": BranchPreset(_tiny_whisper, token_reduction=2)},
    ),
    "siglip-so400m+qwen2-1.5b": Preset(
        "SigLIP-so400m/14-384 (729 tokens) + MLP + Qwen2-1.5B", _qwen2_1_5b, {"vision": BranchPreset(_siglip_so400m)}
    ),
    "clip-l336+llama3-8b": Preset(
        "CLIP ViT-L/14-336 (576 tokens, penultimate layer) + MLP + Llama-3-8B",
        _llama3_8b,
        {"vision": BranchPreset(_clip_l336, feature_layer=-2)},
    ),
    "whisper-small+siglip-so400m+mistral-7b": Preset(
        "Whisper-small encoder + SigLIP-so400m + Mistral-7B",
        _mistral_7b,
        {"vision": BranchPreset(_siglip_so400m), "audio": BranchPreset(_whisper_small, token_reduction=2)},
    ),
}


def list_presets() -> dict[str, str]:
    return {name: p.description for name, p in PRESETS.items()}


def preset_configs(name: str, vocab_size: int | None = None) -> dict[str, PretrainedConfig]:
    """The HF configs of a preset: ``{"llm": ..., "<modality>": ...}`` (for planners and profilers)."""
    preset = _get(name)
    return {"llm": preset.llm(vocab_size), **{m: b.config() for m, b in preset.encoders.items()}}


def _get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def _encoder_from_config(config: PretrainedConfig) -> torch.nn.Module:
    if isinstance(config, SiglipVisionConfig):
        return SiglipVisionModel(config)
    if isinstance(config, CLIPVisionConfig):
        return CLIPVisionModel(config)
    if isinstance(config, WhisperConfig):
        return WhisperEncoder(config)  # the decoder is never used by an MLLM
    return AutoModel.from_config(config)


def build_preset(
    name: str,
    *,
    vocab_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attention_backend: str = "reference",
    mask_mode: str = "multimodal",
    seed: int | None = None,
) -> MultimodalLM:
    """Build a preset with random weights. ``device="meta"`` allocates nothing (for counting/planning)."""
    preset = _get(name)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        llm = AutoModelForCausalLM.from_config(preset.llm(vocab_size), dtype=dtype)
        hidden = llm.config.hidden_size
        encoders = {}
        for modality, branch in preset.encoders.items():
            encoder = _encoder_from_config(branch.config())
            if dtype is not None:
                encoder = encoder.to(dtype)
            encoders[modality] = ModalityEncoder.build(
                encoder, hidden, projector=branch.projector, token_reduction=branch.token_reduction,
                feature_layer=branch.feature_layer,
            )
            if dtype is not None:
                encoders[modality].projector.to(dtype)
    return MultimodalLM(llm, encoders, attention_backend=attention_backend, mask_mode=mask_mode)


_DUAL_TOWER = ("clip", "siglip")


def build_from_parts(
    llm_path: str,
    encoders: dict[str, dict],
    *,
    dtype: torch.dtype | None = None,
    attention_backend: str = "reference",
    mask_mode: str = "multimodal",
) -> MultimodalLM:
    """Compose from local ``from_pretrained`` folders.

    ``encoders``: modality → {"path": folder, "projector": "mlp", "token_reduction": 1,
    "feature_layer": -1}. Paths are read locally only (``local_files_only``).
    """
    llm = AutoModelForCausalLM.from_pretrained(llm_path, dtype=dtype, local_files_only=True)
    hidden = llm.config.hidden_size
    built = {}
    for modality, spec in encoders.items():
        spec = dict(spec)
        path = spec.pop("path", None)
        if path is None:
            raise ValueError(f"encoder {modality!r} needs a 'path'")
        encoder = AutoModel.from_pretrained(path, dtype=dtype, local_files_only=True)
        if getattr(encoder.config, "model_type", None) in _DUAL_TOWER and hasattr(encoder, "vision_model"):
            # A full CLIP/SigLIP checkpoint: an MLLM uses only its vision tower.
            encoder = encoder.vision_model
        built[modality] = ModalityEncoder.build(encoder, hidden, **spec)
    return MultimodalLM(llm, built, attention_backend=attention_backend, mask_mode=mask_mode)
