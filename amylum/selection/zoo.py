"""Candidate components (a vision encoder or an LLM) and the pairs they compose.

A component comes from exactly one source:
- ``preset``: the vision encoder / the LLM of an amylum preset (random weights);
- ``config``: an HF config as a table with ``model_type`` (random weights);
- ``path``: a local ``from_pretrained`` folder (pretrained weights, read locally only).

Random-weight components are built under their own ``seed``, so an encoder has the same
weights in every pair it joins (as a pretrained one would), and a rebuilt pair matches the
frozen weights its checkpoints were trained against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ROLES = ("encoder", "llm")


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    preset: str = ""
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    path: str = ""
    seed: int = 0
    feature_layer: int = -1  # encoders: which hidden layer feeds the projector
    tokenizer: str = ""  # LLMs from a path: their own tokenizer folder ("" = the data's tokenizer)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"component {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        sources = [s for s in ("preset", "config", "path") if getattr(self, s)]
        if len(sources) != 1:
            raise ValueError(f"{self.role} {self.name!r} needs exactly one of preset, config or path; got {sources or 'none'}")
        if self.config and "model_type" not in self.config:
            raise ValueError(f"{self.role} {self.name!r}: config needs a model_type (e.g. 'siglip_vision_model', 'llama')")

    @property
    def source(self) -> str:
        return f"preset {self.preset}" if self.preset else f"path {self.path}" if self.path else f"config {self.config['model_type']}"

    def hf_config(self, vocab_size: int | None = None):
        """The component's HF config (read from the folder for a path)."""
        from transformers import AutoConfig

        if self.path:
            return AutoConfig.from_pretrained(self.path, local_files_only=True)
        if self.preset:
            from amylum.models import preset_configs

            configs = preset_configs(self.preset, vocab_size=vocab_size)
            key = "llm" if self.role == "llm" else "vision"
            if key not in configs:
                raise ValueError(f"preset {self.preset!r} has no {key} component (it has {sorted(configs)})")
            return configs[key]
        cfg = dict(self.config)
        model_type = cfg.pop("model_type")
        if self.role == "llm" and vocab_size is not None:
            cfg["vocab_size"] = vocab_size
        return AutoConfig.for_model(model_type, **cfg)

    def build(self, vocab_size: int | None = None) -> nn.Module:
        if self.path:
            from transformers import AutoModel, AutoModelForCausalLM

            cls = AutoModelForCausalLM if self.role == "llm" else AutoModel
            model = cls.from_pretrained(self.path, local_files_only=True)
            if self.role == "llm" and vocab_size is not None and model.config.vocab_size < vocab_size:
                raise ValueError(f"LLM {self.name!r} has {model.config.vocab_size} embeddings but the tokenizer has "
                                 f"{vocab_size} tokens: give the LLM its own tokenizer (tokenizer = \"...\")")
            return model
        config = self.hf_config(vocab_size)
        torch.manual_seed(self.seed)
        if self.role == "llm":
            from transformers import AutoModelForCausalLM

            return AutoModelForCausalLM.from_config(config)
        return _vision_model(config)


def _vision_model(config) -> nn.Module:
    from transformers import AutoModel, CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    # AutoModel maps these vision-only configs to the two-tower models; build the vision tower.
    if isinstance(config, SiglipVisionConfig):
        return SiglipVisionModel(config)
    if isinstance(config, CLIPVisionConfig):
        return CLIPVisionModel(config)
    return AutoModel.from_config(config)


def component_from_dict(data: dict[str, Any], role: str, where: str) -> Component:
    known = {"name", "preset", "config", "path", "seed", "feature_layer", "tokenizer"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    if "name" not in data:
        raise ValueError(f"{where}: every candidate needs a name")
    return Component(role=role, **data)


@dataclass(frozen=True)
class Pair:
    encoder: Component
    llm: Component

    @property
    def name(self) -> str:
        return f"{self.encoder.name}+{self.llm.name}"

    def build(self, vocab_size: int, *, projector: str = "mlp", attention_backend: str = "reference") -> nn.Module:
        """The composed ``MultimodalLM``; the projector is seeded from both components' seeds."""
        from amylum.models import ModalityEncoder, MultimodalLM

        llm = self.llm.build(vocab_size)
        encoder = self.encoder.build()
        hidden = llm.config.get_text_config().hidden_size
        torch.manual_seed(1_000_003 * self.encoder.seed + self.llm.seed + 7)
        branch = ModalityEncoder.build(encoder, hidden, projector=projector, feature_layer=self.encoder.feature_layer)
        return MultimodalLM(llm, {"vision": branch}, attention_backend=attention_backend)
