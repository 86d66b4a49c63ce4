"""Training FLOPs of a multimodal step, counted per module, frozen-aware (DESIGN §4.6).

Forward FLOPs are measured once with ``torch.utils.flop_counter`` on a real batch, per module
(each encoder branch's encoder and projector, and the LLM), and normalised per item (encoders:
one image or clip always costs the same, since inputs have a fixed shape) or per token (LLM).
Backward is derived from what trains:

* weight gradients cost one forward per trainable parameter fraction (0 for a frozen module);
* input gradients cost one forward when anything at or upstream of the module trains
  (a frozen encoder fed by pixels needs no backward at all; a frozen LLM under a trainable
  projector still back-propagates through every layer).

The LLM's attention term grows with sequence length, so per-token LLM cost is a measured
average on the first batch; a rough figure for MFU, like torchtitan's ``6N + 12LHQT``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense bf16 tensor-core peak (TFLOP/s) by substring of the device name; sources: vendor datasheets.
_PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
                     ("A10", 125.0), ("4090", 165.0), ("V100", 125.0))


def peak_tflops(device: torch.device, override: float = 0.0) -> float | None:
    """The device's peak TFLOP/s, or None when unknown (CPU, unlisted GPU without override)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for key, v in _PEAK_BF16_TFLOPS if key in name), None)


def _fraction_trainable(module: nn.Module) -> float:
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad) / total if total else 0.0


def _train_multiplier(module: nn.Module, upstream_trains: bool) -> float:
    frac = _fraction_trainable(module)
    return 1.0 + (1.0 if (upstream_trains or frac > 0) else 0.0) + frac


@dataclass
class StepFlops:
    """Training FLOPs per LLM token and per encoder item (forward + needed backward)."""

    llm_per_token: float
    encoder_per_item: dict[str, float] = field(default_factory=dict)

    def step(self, num_tokens: int, items: dict[str, int]) -> tuple[float, float]:
        """(llm_flops, encoder_flops) of a step with these token and item counts."""
        enc = sum(self.encoder_per_item.get(m, 0.0) * n for m, n in items.items())
        return self.llm_per_token * num_tokens, enc


def _module_flops(counts: dict[str, dict], suffix: str) -> float:
    """FLOPs recorded under the module whose tracked name ends with ``suffix``."""
    for name, ops in counts.items():
        if name.endswith(suffix):
            return float(sum(ops.values()))
    return 0.0


@contextmanager
def _countable_attention(model: nn.Module):
    """The model with the dense reference attention while FLOPs are counted.

    ``FlopCounterMode`` cannot run FlexAttention (a higher-order op: "no implementation found for
    'torch.ops.higher_order.flex_attention'"), so counting a model on the flex backends would
    fail the trainer's first step. The reference backend does the same projections and MLPs and
    attends with SDPA, which the counter counts as dense attention (as it would count flex).
    """
    from amylum.attention import setup_llm_attention

    backend = getattr(model, "attention_backend", None)
    llm = getattr(model, "llm", None)
    if llm is None or backend in (None, "reference", "hf"):
        yield
        return
    setup_llm_attention(llm, "reference")
    model.attention_backend = "reference"
    try:
        yield
    finally:
        setup_llm_attention(llm, backend)
        model.attention_backend = backend


@torch.no_grad()
def measure_step_flops(model: nn.Module, batch) -> StepFlops:
    """Count one forward of ``batch`` (eval mode, RNG untouched) and scale to training FLOPs.

    Works for any model with ``.llm`` and ``.encoders[name].encoder/.projector``; other models
    are counted as a single LLM-like module.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.random.fork_rng(devices=[]), _countable_attention(model), counter:
            model(batch)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    total = float(sum(counts.get("Global", {}).values()))
    tokens = max(1, batch.num_tokens)
    encoders = getattr(model, "encoders", {})
    llm = getattr(model, "llm", None)
    if llm is None:
        return StepFlops(llm_per_token=3.0 * total / tokens)
    per_item: dict[str, float] = {}
    any_branch_trains = False
    for name, branch in encoders.items():
        n = batch.num_items(name)
        if n == 0:
            continue
        enc_f = _module_flops(counts, f"encoders.{name}.encoder") / n
        proj_f = _module_flops(counts, f"encoders.{name}.projector") / n
        enc_trains = _fraction_trainable(branch.encoder) > 0
        per_item[name] = enc_f * _train_multiplier(branch.encoder, False) + proj_f * _train_multiplier(
            branch.projector, enc_trains
        )
        any_branch_trains |= enc_trains or _fraction_trainable(branch.projector) > 0
    # Everything outside the encoder branches is the LLM's (embedding, layers, head); summing the
    # LLM's children would miss whatever the tracker attributes to the wrapper itself.
    branch_total = sum(_module_flops(counts, f"encoders.{name}") for name in encoders)
    llm_f = (total - branch_total) / tokens
    return StepFlops(llm_per_token=llm_f * _train_multiplier(llm, any_branch_trains), encoder_per_item=per_item)
