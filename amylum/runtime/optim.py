"""AdamW over the trainable parameters and a warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from amylum.config import TrainingConfig


def build_optimizer(model: nn.Module, cfg: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW on parameters with ``requires_grad``; frozen ones get no optimizer state at all.

    Matrices decay, biases and norm scales (1-D tensors) do not: decaying a LayerNorm gain
    towards zero only fights the normalisation. ``fused`` on GPU is one kernel per step;
    ``training.adamw_kernel="triton"`` takes amylum's one-launch kernel (same update).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: check model.frozen")
    groups = [g for g in (
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    if cfg.adamw_kernel == "triton":
        if device.type != "cuda":
            raise ValueError(f"training.adamw_kernel='triton' runs on CUDA devices only, not {device}")
        from amylum.runtime.adamw_triton import TritonAdamW

        return TritonAdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=device.type == "cuda" or None
    )


def lr_factor(step: int, cfg: TrainingConfig) -> float:
    """Multiplier of ``cfg.lr`` for optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
