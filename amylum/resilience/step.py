"""One training step of one pipeline (here: one node) over its slice of the global batch.

The loss of every microbatch is its summed token cross-entropy divided by the *global* target
count of the step (all microbatches of all pipelines), so summing gradients over replicas gives
exactly the gradient of the global mean loss: the trajectory does not depend on how the global
batch is split, which is what lets a re-planned group continue the same run.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist

from amylum.resilience.parts import Parts, target_count
from amylum.resilience.sampling import Sample


def collate(parts: Parts, samples: list[Sample]):
    """A batch of the samples that load (a bad record, under ``on_error = "skip"``, is consumed
    without a slot, as in ``ResumableLoader``); None when none does."""
    loaded = [s for s in (parts.dataset[x.index] for x in samples) if s is not None]
    if not loaded:
        return None
    return parts.dataset.processor.collate(loaded, pack=False, max_length=parts.dataset.processor.max_length)


def train_step(parts: Parts, microbatches: list[list[Sample]], grad_sync: Callable[[], None],
               before_commit: Callable[[], None], grad_clip: float) -> dict:
    """Forward/backward this node's microbatches, sync gradients, update. Returns the global loss."""
    batches = [b for b in (collate(parts, mb) for mb in microbatches) if b is not None]
    counts = torch.tensor([float(sum(target_count(b) for b in batches))])
    dist.all_reduce(counts)
    total = max(1.0, float(counts[0]))
    loss_sum = torch.zeros(1)
    for batch in batches:
        out = parts.model(batch, num_items_in_batch=total)
        out.loss.backward()
        loss_sum += out.loss.detach()
    # the previous step's snapshot is complete before this step can complete anywhere
    before_commit()
    grad_sync()
    dist.all_reduce(loss_sum)
    params = [p for p in parts.model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    return {"loss": float(loss_sum[0]), "targets": int(total), "grad_norm": float(norm)}
