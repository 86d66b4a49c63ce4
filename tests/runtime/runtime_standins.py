"""Stand-ins (imported by tests as `runtime_standins`) for the trainer's two contracts: a model taking a MultimodalBatch, a stateful loader."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from amylum.data.batch import IGNORE_INDEX, MultimodalBatch

VOCAB = 16


def make_batch(rows: torch.Tensor) -> MultimodalBatch:
    labels = rows.clone()
    labels[:, 0] = IGNORE_INDEX
    zeros = torch.zeros_like(rows)
    return MultimodalBatch(
        input_ids=rows, labels=labels, position_ids=torch.arange(rows.shape[1]).expand_as(rows).clone(),
        sample_ids=zeros, segment_ids=zeros - 1, kinds=zeros, records=[[f"r{i}"] for i in range(rows.shape[0])],
    )


class SequenceLoader:
    """Rows of a learnable pattern (each token = previous + 1 mod VOCAB), shuffled per epoch by seed."""

    def __init__(self, n: int = 64, seq: int = 8, batch_size: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.data = (starts + torch.arange(seq)) % VOCAB
        self.batch_size, self.seed, self.epoch, self.index = batch_size, seed, 0, 0

    def __iter__(self):
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        while self.index < len(order):
            idx = order[self.index : self.index + self.batch_size]
            self.index += self.batch_size
            yield make_batch(self.data[idx])
        self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state):
        self.epoch, self.index = state["epoch"], state["index"]


@dataclass
class Out:
    loss: torch.Tensor
    num_target_tokens: torch.Tensor


class TinyLM(nn.Module):
    """Embedding → dropout (draws RNG every step) → linear; a frozen extra layer tests freezing."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.frozen = nn.Linear(32, 32)
        self.frozen.requires_grad_(False)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, batch: MultimodalBatch) -> Out:
        h = self.drop(self.frozen(self.embed(batch.input_ids)))
        logits = self.head(h)[:, :-1]
        targets = batch.labels[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return Out(loss, (targets != IGNORE_INDEX).sum())




def vision_batch(model, vocab):
    """One text+image sample built directly (no tokenizer needed): 4 text, N image, 4 text tokens."""
    spec = model.modality_specs()["vision"]
    n_img = spec.tokens_per_item
    seq = 8 + n_img
    ids = torch.randint(3, vocab, (1, seq), generator=torch.Generator().manual_seed(0))
    kinds = torch.zeros_like(ids)
    kinds[0, 4 : 4 + n_img] = 1
    segment = torch.full_like(ids, -1)
    segment[0, 4 : 4 + n_img] = 0
    labels = ids.masked_fill(kinds > 0, -100)
    labels[0, :4] = -100
    pixels = torch.randn(1, spec.num_channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(1))
    return MultimodalBatch(
        input_ids=ids, labels=labels, position_ids=torch.arange(seq)[None], sample_ids=torch.zeros_like(ids),
        segment_ids=segment, kinds=kinds, modalities=("vision",), encoder_inputs={"vision": {"pixel_values": pixels}},
        item_tokens={"vision": [n_img]}, item_records={"vision": ["s0"]}, records=[["s0"]],
    )
