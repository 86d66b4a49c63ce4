"""Specs from HF configs match the HF models' own parameter counts; composed models are described."""

import pytest
import torch
from torch import nn

from amylum.planner.configs import EncoderInput, model_spec_from_configs
from amylum.planner.module import model_spec_from_module
from amylum.planner.presets import ENCODERS, LLMS

transformers = pytest.importorskip("transformers")


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_llama_layer_params_match_hf():
    cfg = transformers.LlamaConfig(**{k: v for k, v in LLMS["tiny-llm"].items() if k != "model_type"})
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(cfg)
    spec = model_spec_from_configs("t", cfg, text_tokens=8)
    assert spec.llm[1].params == _count(hf.model.layers[0])
    assert spec.llm[0].params == _count(hf.model.embed_tokens)
    assert len(spec.llm) == cfg.num_hidden_layers + 2


def test_hf_config_object_equals_dict():
    d = ENCODERS["tiny-vision"][0]
    obj = transformers.SiglipVisionConfig(**{k: v for k, v in d.items() if k != "model_type"})
    a = model_spec_from_configs("a", LLMS["tiny-llm"], {"vision": EncoderInput(d)}, 8)
    b = model_spec_from_configs("a", LLMS["tiny-llm"], {"vision": EncoderInput(obj)}, 8)
    assert a == b
    with torch.device("meta"):
        hf = transformers.SiglipVisionModel(obj)
    assert a.branches[0].layers[1].params == _count(hf.encoder.layers[0])
    # the LLM sees the text plus the (image/patch)^2 tokens of the image
    assert a.llm[1].tokens == 8 + (32 // 8) ** 2


def test_unsupported_config_is_named():
    with pytest.raises(ValueError, match="'bert' is not a supported decoder"):
        model_spec_from_configs("x", {"model_type": "bert", "hidden_size": 8})


class _Custom(nn.Module):
    """A custom encoder with no config: a stem and a layer list."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(3))


class _Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = _Custom()
        self.projector = nn.Linear(16, 64)


class _Composed(nn.Module):
    def __init__(self):
        super().__init__()
        cfg = transformers.LlamaConfig(**{k: v for k, v in LLMS["tiny-llm"].items() if k != "model_type"})
        self.llm = transformers.LlamaForCausalLM(cfg)
        self.encoders = nn.ModuleDict({"sensor": _Enc()})


def test_spec_from_hand_built_module_reads_frozen_flags():
    with torch.device("meta"):
        m = _Composed()
    m.encoders["sensor"].encoder.requires_grad_(False)
    m.llm.requires_grad_(False)
    m.llm.model.layers[3].requires_grad_(True)  # a partly frozen LLM
    spec = model_spec_from_module(m, text_tokens=8)
    br = spec.branches[0].layers
    assert [l.name for l in br] == ["sensor.encoder.stem", "sensor.encoder.layers.0", "sensor.encoder.layers.1",
                                    "sensor.encoder.layers.2", "sensor.projector"]
    assert br[0].params == 4 * 16 + 16 and br[1].params == 16 * 16 + 16
    assert not any(l.trainable for l in br[:-1]) and br[-1].trainable
    assert [l.trainable for l in spec.llm] == [False, False, False, False, True, False]
