"""The model as planner layers ("units"): which parameters each layer of a template owns.

A unit is one transformer block (``….layers.<i>``) or, for everything else, the module that owns
the parameter (embeddings, norms, projector linears). Units are ordered as the parameters appear in
``model.named_parameters()``, i.e. encoders' parts and then the LLM in the model's own order, the
chain the planner cuts into stages. Tied weights (an LLM's embedding and head) appear once:
``named_parameters`` yields each tensor once, so a tied matrix belongs to exactly one unit and is
never synchronized or transferred twice.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from amylum.planner.templates import LayerCost

_BLOCK = re.compile(r"^(.*?\.layers\.\d+)\.")


@dataclass(frozen=True)
class Unit:
    name: str
    params: tuple[str, ...]  # parameter names (model.named_parameters) of this unit


def model_units(model: nn.Module) -> list[Unit]:
    """Trainable parameters grouped into units, in model order."""
    order: list[str] = []
    members: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = _BLOCK.match(name)
        unit = m.group(1) if m else name.rsplit(".", 1)[0]
        if unit not in members:
            order.append(unit)
            members[unit] = []
        members[unit].append(name)
    if not order:
        raise ValueError("the model has no trainable parameters: nothing to train or replicate")
    return [Unit(u, tuple(members[u])) for u in order]


def unit_costs(model: nn.Module, units: list[Unit]) -> list[LayerCost]:
    """Planner layers for the units. On CPU with one process per node no profile exists, so time is
    taken as proportional to parameter count (a dense layer's FLOPs per token); bytes are fp32
    weights, gradients and AdamW's two moments. Templates only need the relative figures."""
    params = dict(model.named_parameters())
    out = []
    for u in units:
        n = sum(params[p].numel() for p in u.params)
        out.append(LayerCost(u.name, fwd_s=2e-9 * n, bwd_s=4e-9 * n, param_bytes=4.0 * n,
                             grad_bytes=4.0 * n, optim_bytes=8.0 * n, act_bytes=0.0, out_bytes=1e3))
    return out


def unit_state(model: nn.Module, optimizer: torch.optim.Optimizer, unit: Unit) -> dict[str, torch.Tensor]:
    """A unit's training state: each parameter and its optimizer moments and step counter."""
    params = dict(model.named_parameters())
    out = {}
    for name in unit.params:
        p = params[name]
        out[f"param/{name}"] = p.detach()
        for key, value in sorted(optimizer.state.get(p, {}).items()):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name}.{key} is a {type(value).__name__}, not a tensor")
            out[f"optim/{name}/{key}"] = value
    return out


def load_unit_state(model: nn.Module, optimizer: torch.optim.Optimizer, unit: Unit,
                    state: dict[str, torch.Tensor]) -> None:
    """Inverse of ``unit_state``: copy into the live parameters and optimizer state (in place)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in unit.params:
            key = f"param/{name}"
            if key not in state:
                raise KeyError(f"state of unit {unit.name} lacks {key}")
            params[name].copy_(state[key])
            prefix = f"optim/{name}/"
            moments = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            if moments:
                optimizer.state[params[name]] = {k: v.clone() for k, v in moments.items()}
            else:
                optimizer.state.pop(params[name], None)


def unit_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-1 of a unit's state (names, dtypes, shapes, bytes): equal digests mean bit-equal state."""
    h = hashlib.sha1()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
