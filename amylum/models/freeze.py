"""Which parts of a MultimodalLM train: a spec of its own, separate from train()/eval().

Cornstarch froze modules by overriding ``train()``, which ties "does it learn" to "does
dropout run". Here freezing only sets ``requires_grad``; frozen parameters never receive a
gradient and never enter the optimizer (the trainer builds it from ``requires_grad``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

TRAINABLE, FROZEN, LORA = "trainable", "frozen", "lora"


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class BranchFreeze:
    encoder: str = FROZEN
    projector: str = TRAINABLE


@dataclass
class FreezeSpec:
    """``llm``: trainable | frozen | lora. ``encoders``: modality → BranchFreeze (missing
    modalities default to a frozen encoder with a trainable projector, the LLaVA recipe)."""

    llm: str = TRAINABLE
    encoders: dict[str, BranchFreeze] = field(default_factory=dict)
    lora: LoraSpec = field(default_factory=LoraSpec)

    @classmethod
    def from_dict(cls, data: dict) -> "FreezeSpec":
        data = dict(data)
        encoders = {k: v if isinstance(v, BranchFreeze) else BranchFreeze(**v) for k, v in data.pop("encoders", {}).items()}
        lora = data.pop("lora", {})
        lora = lora if isinstance(lora, LoraSpec) else LoraSpec(**{k: tuple(v) if k == "target_modules" else v for k, v in lora.items()})
        return cls(encoders=encoders, lora=lora, **data)


def _set_trainable(module: nn.Module, state: str, what: str) -> None:
    if state not in (TRAINABLE, FROZEN):
        raise ValueError(f"{what} must be '{TRAINABLE}' or '{FROZEN}', got {state!r}")
    module.requires_grad_(state == TRAINABLE)


def apply_freeze(model: nn.Module, spec: FreezeSpec) -> nn.Module:
    """Set ``requires_grad`` on every part of ``model`` (a MultimodalLM) from ``spec``.

    With ``llm = "lora"`` the LLM is wrapped by peft's LoRA (only adapter weights train).
    Returns the model for chaining.
    """
    unknown = set(spec.encoders) - set(model.encoders.keys())
    if unknown:
        raise ValueError(f"freeze spec names encoders {sorted(unknown)}; the model has {list(model.encoders.keys())}")
    for name, branch in model.encoders.items():
        rule = spec.encoders.get(name, BranchFreeze())
        _set_trainable(branch.encoder, rule.encoder, f"encoders.{name}.encoder")
        _set_trainable(branch.projector, rule.projector, f"encoders.{name}.projector")
    if spec.llm == LORA:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as exc:  # peft is an optional dependency
            raise ImportError("llm = 'lora' needs peft: pip install 'amylum[lora]'") from exc
        if hasattr(model.llm, "peft_config"):
            raise ValueError("the LLM already carries peft adapters; apply LoRA once")
        config = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=list(spec.lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model.llm = get_peft_model(model.llm, config)  # freezes the base weights itself
    else:
        _set_trainable(model.llm, spec.llm, "llm")
    return model
