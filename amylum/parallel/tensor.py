"""Tensor parallelism with DTensor, per module, from each model's own TP plan.

An HF LLM ships ``base_model_tp_plan`` in its config (``"layers.*.self_attn.q_proj": "colwise"``
…); vision towers and the Whisper encoder do not, so their (standard attention + MLP) plans are
written here as data. Each plan is applied block by block to the component's own layer list
with ``parallelize_module``; attention reshapes with ``-1`` heads in every supported family, so a
block computes on its local heads with no copied forward. Each component takes its own mesh,
so the vision tower may run TP 1 while the LLM runs TP 4.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from amylum.parallel.blocks import find_layer_list

_ENCODER_BLOCK_PLAN = {
    "self_attn.q_proj": "colwise",
    "self_attn.k_proj": "colwise",
    "self_attn.v_proj": "colwise",
    "self_attn.out_proj": "rowwise",
    "mlp.fc1": "colwise",
    "mlp.fc2": "rowwise",
}
ENCODER_TP_PLANS = {
    "siglip_vision_model": _ENCODER_BLOCK_PLAN,
    "clip_vision_model": _ENCODER_BLOCK_PLAN,
    "whisper": {**{k: v for k, v in _ENCODER_BLOCK_PLAN.items() if not k.startswith("mlp.")}, "fc1": "colwise", "fc2": "rowwise"},
}
_STYLES = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}


def _config(module: nn.Module):
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def block_tp_plan(module: nn.Module) -> dict[str, str]:
    """The per-block plan (keys relative to one block) for an HF LLM or a supported encoder."""
    config = _config(module)
    model_type = getattr(config, "model_type", None)
    if model_type in ENCODER_TP_PLANS:
        return dict(ENCODER_TP_PLANS[model_type])
    plan = getattr(config, "base_model_tp_plan", None)
    if not plan:
        raise ValueError(f"{type(module).__name__} ({model_type}) has no TP plan; pass plan= explicitly")
    block_plan = {}
    for key, style in plan.items():
        if key.startswith("layers.*."):
            block_plan[key[len("layers.*."):]] = style
        # Plans for embeddings/heads outside the blocks are not applied: those stay replicated.
    return block_plan


def _check_divisible(module: nn.Module, tp: int) -> None:
    config = _config(module)
    checks = {
        "attention heads": getattr(config, "num_attention_heads", None) or getattr(config, "encoder_attention_heads", None),
        "key/value heads": getattr(config, "num_key_value_heads", None),
        "MLP width": getattr(config, "intermediate_size", None) or getattr(config, "encoder_ffn_dim", None),
    }
    for what, value in checks.items():
        if value is not None and value % tp:
            raise ValueError(
                f"TP degree {tp} does not divide the {value} {what} of {type(module).__name__}; "
                f"choose a TP degree that divides it (or TP 1 for this module)"
            )


def apply_tp(module: nn.Module, mesh: DeviceMesh, plan: dict[str, str] | None = None) -> nn.Module:
    """Shard the blocks of ``module`` (an HF LLM or encoder) over the 1-D ``mesh``."""
    if mesh.ndim != 1:
        raise ValueError(f"apply_tp takes a 1-D mesh, got {mesh.ndim}-D")
    tp = mesh.size()
    if tp == 1:
        return module
    _check_divisible(module, tp)
    plan = plan if plan is not None else block_tp_plan(module)
    unknown = sorted(set(plan.values()) - set(_STYLES))
    if unknown:
        raise ValueError(f"unsupported TP styles {unknown}; supported: {sorted(_STYLES)}")
    blocks = find_layer_list(module)
    if blocks is None:
        raise ValueError(f"no block list found in {type(module).__name__}")
    for block in blocks:
        names = dict(block.named_modules())
        missing = [k for k in plan if k not in names]
        if missing:
            raise ValueError(f"TP plan names {missing}, not found in block {type(block).__name__}")
        parallelize_module(block, mesh, {k: _STYLES[v]() for k, v in plan.items()})
    return module
