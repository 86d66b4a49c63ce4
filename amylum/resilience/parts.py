"""The pieces one worker trains with: model, optimizer, schedule, data (reused from amylum)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Imported here, not lazily: a (re)started worker pays these imports before it joins the group,
# in parallel with its peers, instead of serially after the rendezvous.
from amylum.config import Config
from amylum.data.batch import IGNORE_INDEX
from amylum.data.dataset import MultimodalDataset, ResumableLoader
from amylum.data.processor import MultimodalProcessor
from amylum.data.tokenizer import load_tokenizer
from amylum.models import build_preset  # noqa: F401  (transformers and the model classes)
from amylum.runtime.build import build_model, prepare_data
from amylum.resilience.sampling import GlobalOrder
from amylum.resilience.units import Unit, model_units
from amylum.runtime.optim import build_optimizer, build_scheduler, lr_factor


@dataclass
class Parts:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: object  # amylum.data.dataset.MultimodalDataset
    order: GlobalOrder
    units: list[Unit]


def build_parts(cfg: Config, global_microbatches: int) -> Parts:
    """Everything is a pure function of the config and seed: every node builds the same model."""
    device = torch.device("cpu")
    paths = prepare_data(cfg)
    tokenizer = load_tokenizer(paths.tokenizer)
    model = build_model(cfg, vocab_size=len(tokenizer), device=device)
    model.train()
    processor = MultimodalProcessor(tokenizer, model.modality_specs(), max_length=cfg.data.max_length,
                                    on_error=cfg.data.on_error)
    dataset = MultimodalDataset(paths.train, processor)
    # ResumableLoader's seeded per-epoch permutation is the data order; positions replace its cursor
    loader = ResumableLoader(dataset, batch_size=cfg.training.batch_size, seed=cfg.job.seed)
    order = GlobalOrder(loader.order, len(dataset), cfg.training.batch_size, global_microbatches)
    optimizer = build_optimizer(model, cfg.training, device)
    scheduler = build_scheduler(optimizer, cfg.training)
    return Parts(model, optimizer, scheduler, dataset, order, model_units(model))


def set_schedule_step(parts: Parts, cfg: Config, step: int) -> None:
    """Put the LR schedule at ``step`` completed steps (it is a pure function of the step)."""
    sd = parts.scheduler.state_dict()
    lrs = [base * lr_factor(step, cfg.training) for base in sd["base_lrs"]]
    sd.update(last_epoch=step, _step_count=step + 1, _last_lr=lrs)
    parts.scheduler.load_state_dict(sd)
    for group, lr in zip(parts.optimizer.param_groups, lrs):
        group["lr"] = lr


def target_count(batch) -> int:
    """Tokens with a label after the shift: what the loss averages over."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
