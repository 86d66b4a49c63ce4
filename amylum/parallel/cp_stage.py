"""Context parallelism inside pipeline stages: an LLM stage that runs its slice of layers on a CP shard.

The pipeline executor runs any stage module on ``microbatches[mb]``; here a microbatch is a
:class:`CPMicrobatch`, the batch *and* this rank's ``CPShard``, so the assignment travels with
the microbatch through the schedule (no global state). CP rank ``c`` of every stage forms its
own pipeline: it sends its tokens' hidden states to CP rank ``c`` of the next stage, whose shard
holds the same tokens (one assignment per microbatch for all stages). Within a stage, each
layer's attention exchanges K/V over that stage's CP group.

- First stage: embeds the whole microbatch (colocated encoders run on every CP rank; the
  features of encoder stages must reach every CP rank of it), then keeps its tokens.
- Last stage: the loss of its tokens' targets over the step's global target count.
- Gradients are partial per CP rank: sum them over the stage's CP group after the step
  (``context.allreduce_gradients``) or fold the CP ranks into the stage's FSDP reduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from amylum.data.batch import MultimodalBatch

from .context import CPShard, cp_attention_inputs, shard_tokens


@dataclass(frozen=True)
class CPMicrobatch:
    """One microbatch for a CP pipeline rank: the full batch and this rank's shard of it."""

    batch: MultimodalBatch
    shard: CPShard


class CPLLMStage(nn.Module):
    """Wraps a pipeline ``LLMStage`` (``pipeline.build_stage``) to run it on CP shards.

    ``model`` is the stage's pruned ``MultimodalLM`` (the executor's tied-embedding sync reads it).
    """

    def __init__(self, stage: nn.Module, group=None, *, backend: str = "reference") -> None:
        super().__init__()
        if not hasattr(stage, "first") or not hasattr(stage, "last"):
            raise TypeError(f"CP runs inside LLM stages only, got {type(stage).__name__}")
        self.stage, self.group, self.backend = stage, group, backend

    @property
    def model(self) -> nn.Module:
        return self.stage.model

    def forward(self, item: CPMicrobatch, received: dict[int, torch.Tensor], num_items_in_batch=None):
        if not isinstance(item, CPMicrobatch):
            raise TypeError(f"a CP stage needs CPMicrobatch items (batch + shard), got {type(item).__name__}")
        model, shard = self.stage.model, item.shard
        if self.stage.first:
            features = {self.stage.feeders[p]: t for p, t in received.items()}
            embeds = model.embed(item.batch, features=features)
            shard = shard if shard.index.device == embeds.device else shard.to(embeds.device)
            local = shard_tokens(embeds, shard)
            if shard.num_local == 0:  # an empty shard runs one placeholder token (see context.cp_forward)
                local = embeds.new_zeros(1, 1, embeds.shape[-1])
        else:
            (local,) = received.values()
            shard = shard if shard.index.device == local.device else shard.to(local.device)
        positions = shard.position_ids if shard.num_local else torch.zeros(1, 1, dtype=torch.long, device=local.device)
        attn = cp_attention_inputs(shard, self.group, backend=self.backend)
        states = model.decode(local, SimpleNamespace(position_ids=positions), attn)
        if self.stage.last:
            count = shard.num_targets if num_items_in_batch is None else num_items_in_batch
            return model.loss_from_states(states, SimpleNamespace(index=shard.target_index),
                                          num_items_in_batch=count).loss
        return states
