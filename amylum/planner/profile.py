"""Measured profiles: time one layer of each kind on this device, write a file the planner reads.

A profile stores, per layer kind, the FLOP rate achieved for forward, input-gradient and
weight-gradient work (analytic FLOPs of the same layer divided by measured seconds) and the
activation bytes autograd saved per token. Rates carry over to other shapes of the same kind
(longer sequences, wider layers) better than raw seconds, and the cost model uses them in place
of the GPU type's nominal efficiency when the profile was made on that GPU type.

Backward is split by timing it twice: with weights trainable (B + W) and frozen (B only).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "amylum-profile/1"


@dataclass(frozen=True)
class KindProfile:
    fwd_rate: float  # FLOP/s
    igrad_rate: float
    wgrad_rate: float
    fwd_s: float  # measured seconds, for the reader
    igrad_s: float
    wgrad_s: float
    tokens: int  # tokens timed (microbatch × sequence)
    act_bytes_per_token: float  # saved for backward, measured


@dataclass(frozen=True)
class Profile:
    gpu: str  # matches GPUType.name ("CPU", "H100", …)
    device: str  # what torch reported
    kinds: dict[str, KindProfile] = field(default_factory=dict)

    def rate(self, kind: str, what: str) -> float | None:
        k = self.kinds.get(kind)
        if k is None:
            return None
        r = {"fwd": k.fwd_rate, "igrad": k.igrad_rate, "wgrad": k.wgrad_rate}[what]
        return r if r > 0 else None

    def to_dict(self) -> dict:
        return {"format": FORMAT, "gpu": self.gpu, "device": self.device,
                "kinds": {k: asdict(v) for k, v in self.kinds.items()}}

    @staticmethod
    def from_dict(d: dict) -> "Profile":
        if d.get("format") != FORMAT:
            raise ValueError(f"not an amylum profile: format {d.get('format')!r}, expected {FORMAT!r}")
        return Profile(gpu=d["gpu"], device=d["device"],
                       kinds={k: KindProfile(**v) for k, v in d.get("kinds", {}).items()})


def write_profile(path: str | Path, profile: Profile) -> Path:
    path = Path(path)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path


def read_profile(path: str | Path) -> Profile:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"profile {path} does not exist (make one with `amylum profile`)")
    return Profile.from_dict(json.loads(path.read_text()))


def gpu_name(device) -> str:
    if device.type != "cuda":
        return "CPU"
    import torch

    name = torch.cuda.get_device_name(device)
    for known in ("H200", "H100", "A100", "A40"):
        if known in name:
            return known
    return name


# ---- measurement (imports torch; never used by planning) ------------------------------------

def _representative_layers(model) -> list[tuple[str, object, dict]]:
    """(kind, layer module, call context) for the first layer of each stack in a composed model."""
    from .module import _find_layers, model_spec_from_module

    spec = model_spec_from_module(model, text_tokens=1)
    kinds = {l.name: l.kind for l in spec.all_layers()}
    out = []
    llm_stack = _find_layers(getattr(model.llm, "model", model.llm))
    if llm_stack is not None:
        rotary = getattr(getattr(model.llm, "model", None), "rotary_emb", None)
        out.append((kinds["llm.layers.0"], llm_stack[0], {"rotary": rotary, "causal": True}))
    for name, enc in model.encoders.items():
        stack = _find_layers(enc.encoder)
        key = f"{name}.encoder.layers.0"
        if stack is not None and key in kinds:
            out.append((kinds[key], stack[0], {}))
    return out


def _call(layer, x, ctx):
    import torch

    if ctx.get("causal"):
        pos = torch.arange(x.shape[1], device=x.device)[None]
        pe = ctx["rotary"](x, pos) if ctx.get("rotary") is not None else None
        out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=pe)
    else:
        out = layer(x, attention_mask=None)
    return out[0] if isinstance(out, tuple) else out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _min_time(setup, fn, device, repeats: int) -> float:
    """Fastest of ``repeats`` runs of ``fn(setup())``, timing only ``fn``: the minimum is the
    least disturbed by other work on a shared machine."""
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up allocator and kernel choice
        arg = setup()
        _sync(device)
        t0 = time.perf_counter()
        fn(arg)
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def measure_layer(layer, ctx: dict, hidden: int, tokens: int, microbatch: int, device, dtype, repeats: int):
    """(fwd_s, igrad_s, wgrad_s, saved activation bytes per token) of one layer."""
    import torch

    layer = layer.to(device=device, dtype=dtype)
    params = list(layer.parameters())
    was = [p.requires_grad for p in params]
    x = torch.randn(microbatch, tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    def forward(_=None):
        return _call(layer, x, ctx).float().sum()

    def backward(loss):
        loss.backward()
        x.grad = None
        for p in params:
            p.grad = None

    try:
        for p in params:
            p.requires_grad_(True)
        with torch.no_grad():
            fwd = _min_time(lambda: None, forward, device, repeats)
        full = _min_time(forward, backward, device, repeats)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
        for p in params:
            p.requires_grad_(False)
        igrad = _min_time(forward, backward, device, repeats)
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return fwd, igrad, max(full - igrad, 0.0), saved[0] / (microbatch * tokens)


def measure_profile(model, tokens: int = 64, microbatch: int = 1, device: str = "cpu", dtype=None,
                    repeats: int = 5) -> Profile:
    """Profile every layer kind of a composed model (``MultimodalLM``) on ``device``."""
    import torch

    from .module import model_spec_from_module

    dev = torch.device(device)
    dtype = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    spec = model_spec_from_module(model, text_tokens=tokens)
    by_kind = {}
    for l in spec.all_layers():
        by_kind.setdefault(l.kind, l)
    kinds = {}
    for kind, layer, ctx in _representative_layers(model):
        ref = by_kind[kind]
        hidden = ref.hidden
        n = microbatch * tokens
        # FLOPs of the same layer at the timed sequence length (attention scales with it)
        ref_seq = ref.tokens
        attn_fwd = max(ref.fwd_flops - ref.wgrad_flops, 0.0) * tokens / max(ref_seq, 1)
        fwd_flops = (ref.wgrad_flops + attn_fwd) * n
        igrad_flops = (ref.wgrad_flops + 2 * attn_fwd) * n
        wgrad_flops = ref.wgrad_flops * n
        f, b, w, act = measure_layer(layer, ctx, hidden, tokens, microbatch, dev, dtype, repeats)
        kinds[kind] = KindProfile(fwd_rate=fwd_flops / f, igrad_rate=igrad_flops / b,
                                  wgrad_rate=wgrad_flops / w if w > 0 else 0.0, fwd_s=f, igrad_s=b, wgrad_s=w,
                                  tokens=n, act_bytes_per_token=act)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Profile(gpu=gpu_name(dev), device=name, kinds=kinds)
