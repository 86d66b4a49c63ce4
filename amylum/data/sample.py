"""One processed (not yet collated) sample: a record turned into tokens and encoder inputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ProcessedSample:
    """All per-token tensors are 1-D of the same length.

    ``segment_ids`` count items within this sample (0, 1, …; ``-1`` for text); collation
    renumbers them to be unique within a packed row. ``encoder_inputs[name][input_name]`` is
    (items, ...) in placeholder order, ``item_tokens[name]`` the tokens each item expands to.
    """

    record_id: str
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    kinds: torch.Tensor
    encoder_inputs: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    item_tokens: dict[str, list[int]] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    reference: str | None = None  # generation mode: the held-out assistant reply
    extra: dict[str, Any] = field(default_factory=dict)  # the record's other keys (task, …)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_segments(self) -> int:
        return sum(len(v) for v in self.item_tokens.values())
