import torch
from transformers import AutoModelForCausalLM, CLIPConfig, CLIPModel

from amylum.models import build_from_parts
from amylum.models.presets import _tiny_llama, _tiny_siglip, _tiny_whisper, _encoder_from_config
from model_batches import build_batch, random_inputs


def test_compose_from_local_pretrained_folders(tmp_path):
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_config(_tiny_llama(64))
    llm.save_pretrained(tmp_path / "llm")
    _encoder_from_config(_tiny_siglip()).save_pretrained(tmp_path / "siglip")
    _encoder_from_config(_tiny_whisper()).save_pretrained(tmp_path / "whisper")
    clip = CLIPModel(CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 99},
        vision_config={"hidden_size": 48, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        projection_dim=16,
    ))
    clip.save_pretrained(tmp_path / "clip")
    model = build_from_parts(
        str(tmp_path / "llm"),
        {
            "vision": {"path": str(tmp_path / "siglip"), "projector": "linear"},
            "audio": {"path": str(tmp_path / "whisper"), "token_reduction": 2},
            "clip": {"path": str(tmp_path / "clip"), "feature_layer": -2},
        },
    )
    assert torch.equal(model.llm.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    specs = model.modality_specs()
    assert specs["vision"].tokens_per_item == 16 and specs["clip"].tokens_per_item == 4  # CLS dropped
    assert specs["audio"].frames_per_token == 4
    rows = [[("a", [("text", [1, 2], False), ("vision", 16), ("clip", 4), ("audio", 6), ("text", [3, 4], True)])]]
    batch = build_batch(rows, ["vision", "audio", "clip"], random_inputs(model))
    assert torch.isfinite(model(batch).loss)
