"""ModelSpec from a composed model (``model.encoders[name].encoder/.projector``, ``model.llm``).

Shapes come from the HF configs where there are any (the analytic formulas of configs.py);
frozen flags from ``requires_grad`` (per decoder layer for the LLM, so a partly frozen LLM is
described as such). A custom ``nn.Module`` encoder without a config is described generically:
its parameters are counted (works on the meta device) and each layer's work is taken as
2 FLOPs per parameter per token, the cost of a stack of linear layers.
"""

from __future__ import annotations

import math

from . import layers as L
from .configs import LLAMA_LIKE, VIT_LIKE, WHISPER_LIKE, EncoderInput, branch_layers, encoder_tokens_per_item, llm_layers
from .spec import DTYPE_BYTES, BranchSpec, LayerSpec, ModelSpec

_LAYER_PATHS = ("layers", "encoder.layers", "vision_model.encoder.layers", "blocks", "model.layers")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trainable(module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _find_layers(module):
    for path in _LAYER_PATHS:
        obj = module
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "__len__") and len(obj) > 0:
            return obj
    return None


def _llm_tokens(enc, encoder_tokens: int) -> int:
    spec = getattr(enc, "input_spec", None)
    if spec is not None:
        if hasattr(spec, "max_tokens"):
            return int(spec.max_tokens)
        return int(spec.num_tokens())
    proj = enc.projector
    if hasattr(proj, "num_output_tokens"):
        return int(proj.num_output_tokens(encoder_tokens))
    return encoder_tokens


def _generic_layer(name, module, kind, mod, tokens, hidden) -> LayerSpec:
    p = _count(mod)
    return LayerSpec(name=name, module=module, kind=kind, params=p, tokens=tokens, hidden=hidden,
                     fwd_flops=2.0 * p, igrad_flops=2.0 * p, wgrad_flops=2.0 * p,
                     act_bytes=DTYPE_BYTES * 10 * hidden, act_bytes_igrad=DTYPE_BYTES * 6 * hidden,
                     out_bytes=DTYPE_BYTES * hidden * tokens)


def _branch(name: str, enc, llm_hidden: int, items: int) -> tuple[list[LayerSpec], int]:
    encoder, proj = enc.encoder, enc.projector
    cfg = getattr(encoder, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt in VIT_LIKE | WHISPER_LIKE:
        enc_tokens = encoder_tokens_per_item(cfg)
        llm_per_item = _llm_tokens(enc, enc_tokens)
        merge = max(1, round(enc_tokens / max(1, llm_per_item)))
        layers, _ = branch_layers(name, EncoderInput(cfg, items=items, merge=merge), llm_hidden)
        layers = layers[:-1]  # replaced by the real projector below
    else:
        stack = _find_layers(encoder)
        if stack is None:
            raise ValueError(f"encoder {name!r} ({type(encoder).__name__}) has no config and no layer list "
                             f"at any of {_LAYER_PATHS}; describe it with configs.model_spec_from_configs")
        spec = getattr(enc, "input_spec", None)
        per_item = int(spec.num_tokens()) if spec is not None and hasattr(spec, "tokens_per_item") else 1
        llm_per_item = per_item
        hidden = getattr(proj, "in_dim", None) or int(math.sqrt(max(1, _count(stack[0])) / 12))
        tokens = per_item * items
        module = f"{name}.encoder"
        rest = _count(encoder) - sum(_count(l) for l in stack)
        layers = []
        if rest > 0:
            layers.append(LayerSpec(name=f"{module}.stem", module=module, kind="generic.stem", params=rest,
                                    tokens=tokens, hidden=hidden, fwd_flops=2.0 * rest, igrad_flops=0.0,
                                    wgrad_flops=2.0 * rest, act_bytes=DTYPE_BYTES * hidden, act_bytes_igrad=0.0,
                                    out_bytes=DTYPE_BYTES * hidden * tokens))
        for i, l in enumerate(stack):
            layers.append(_generic_layer(f"{module}.layers.{i}", module, "generic.layer", l, tokens, hidden))
    llm_tokens = llm_per_item * items
    pp = _count(proj)
    layers.append(LayerSpec(name=f"{name}.projector", module=f"{name}.projector", kind="projector", params=pp,
                            tokens=llm_tokens, hidden=llm_hidden, fwd_flops=2.0 * pp, igrad_flops=2.0 * pp,
                            wgrad_flops=2.0 * pp,
                            act_bytes=DTYPE_BYTES * 3 * llm_hidden, act_bytes_igrad=DTYPE_BYTES * llm_hidden,
                            out_bytes=DTYPE_BYTES * llm_hidden * llm_tokens))
    return layers, llm_tokens


def model_spec_from_module(model, text_tokens: int = 1024, items: dict[str, int] | None = None,
                           name: str = "model") -> ModelSpec:
    """Describe ``model`` (works with real, CPU or meta-device parameters)."""
    items = items or {}
    llm = model.llm
    cfg = getattr(llm, "config", None)
    if getattr(cfg, "model_type", None) not in LLAMA_LIKE:
        raise ValueError(f"LLM {type(llm).__name__} has config type {getattr(cfg, 'model_type', None)!r}; "
                         f"supported: {sorted(LLAMA_LIKE)}")
    unknown = sorted(set(items) - set(model.encoders.keys()))
    if unknown:
        raise ValueError(f"items given for unknown modalities {unknown}; model has {list(model.encoders.keys())}")
    branches, mm = [], 0
    flags: dict[str, bool] = {}
    for bname, enc in model.encoders.items():
        ls, n = _branch(bname, enc, cfg.hidden_size, items.get(bname, 1))
        branches.append(BranchSpec(bname, tuple(ls)))
        mm += n
        flags[f"{bname}.encoder"] = _trainable(enc.encoder)
        flags[f"{bname}.projector"] = _trainable(enc.projector)
    llm_ls = llm_layers(cfg, text_tokens + mm)
    stack = _find_layers(getattr(llm, "model", llm))
    fixed = []
    for l in llm_ls:
        tr = _trainable(llm)
        if stack is not None and ".layers." in l.name:
            i = int(l.name.rsplit(".", 1)[1])
            tr = _trainable(stack[i]) if i < len(stack) else tr
        elif l.kind == "embedding" and hasattr(llm, "get_input_embeddings"):
            tr = _trainable(llm.get_input_embeddings())
        elif l.kind == "lm_head" and hasattr(llm, "get_output_embeddings") and llm.get_output_embeddings() is not None:
            tr = _trainable(llm.get_output_embeddings())
        fixed.append(LayerSpec(**{**l.__dict__, "trainable": tr}))
    spec = ModelSpec(name=name, llm=tuple(fixed), branches=tuple(branches))
    return spec.with_trainable(flags) if flags else spec
