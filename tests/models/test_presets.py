import pytest
import torch
from transformers import SiglipVisionModel, WhisperModel

from amylum.models import build_preset, list_presets, preset_configs

# Published parameter counts of the public checkpoints whose shapes the presets copy.
PUBLIC = {
    "qwen2-1.5b": 1_543_714_304,
    "llama-3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "clip-vit-l-14-336 vision": 303_507_456,
    "siglip-so400m vision (with pooling head)": 428_225_600,
    "whisper-small (encoder + decoder)": 241_734_912,
}


def _close(a, b):
    return abs(a - b) / b < 0.01


@pytest.mark.parametrize(
    "preset, llm_key, vision_key",
    [
        ("siglip-so400m+qwen2-1.5b", "qwen2-1.5b", None),
        ("clip-l336+llama3-8b", "llama-3-8b", "clip-vit-l-14-336 vision"),
        ("whisper-small+siglip-so400m+mistral-7b", "mistral-7b", None),
    ],
)
def test_real_size_presets_on_meta_match_public_counts(preset, llm_key, vision_key):
    model = build_preset(preset, device="meta")
    counts = model.parameter_counts()
    assert _close(counts["llm"], PUBLIC[llm_key]), counts
    if vision_key:
        assert _close(counts["vision.encoder"], PUBLIC[vision_key]), counts
    assert all(p.device.type == "meta" for p in model.parameters())


def test_siglip_and_whisper_shapes_match_public_models():
    # The presets drop parts an MLLM never runs (SigLIP's pooling head, Whisper's decoder);
    # the full models built from the same configs must match the public counts.
    cfg = preset_configs("whisper-small+siglip-so400m+mistral-7b")
    with torch.device("meta"):
        vision_cfg = cfg["vision"]
        vision_cfg.vision_use_head = True
        siglip = SiglipVisionModel(vision_cfg)
        whisper = WhisperModel(cfg["audio"])
    assert _close(sum(p.numel() for p in siglip.parameters()), PUBLIC["siglip-so400m vision (with pooling head)"])
    assert _close(sum(p.numel() for p in whisper.parameters()), PUBLIC["whisper-small (encoder + decoder)"])
    model = build_preset("siglip-so400m+qwen2-1.5b", device="meta")
    assert model.modality_specs()["vision"].tokens_per_item == 729


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError, match="available: tiny-vlm"):
        build_preset("gpt-5")
    assert "tiny-valm" in list_presets()
