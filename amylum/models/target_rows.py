"""The LLM's last block runs its feed-forward only on the rows the loss reads.

The fused loss reads the final hidden states at target positions only (answer text; prompts,
image and audio tokens have no label). In every block but the last, all rows matter: later
blocks attend to them. In the last block, a row's feed-forward output reaches nothing but that
row's final state, so for the other rows it is dead work. For the VLM benchmark (4 × 1,769
tokens, 4,096 targets) that is 42 % of the last block's MLP: its three GEMMs and SwiGLU, forward
and backward.

How, without copying the model family's forward: the last block's ``mlp`` module (the name
HF's decoder families use) gets a subclass of its own class whose ``forward`` runs the family's
forward on the gathered target rows (``1 × n × hidden``) and scatters the result into a zero
tensor of the full shape; the block then adds it to its residual as usual. The rows read by the
loss are exactly the computed ones; the others are never read. This happens only inside
``TargetRowsFeedForward.only(...)``, which ``MultimodalLM.forward`` enters for the fused loss;
elsewhere (generation, pipeline stages, context-parallel shards) the module runs as before.

Why a subclass and not forward hooks on the module: with hooks, the step's profile on an H100
(torch 2.11) still had the full-size GEMMs in the last block; the cause was not isolated (a toy
compiled block on the same torch traced such hooks). With the subclass the profile shows the
4,096-row GEMMs (docs/BENCHMARKS.md, issue 5). dynamo traces a module's class ``forward``, and
FSDP2 extends modules the same way. The state dict is unchanged (no new parameters or
submodules). The active rows are a tensor attribute of the module, which dynamo reads as a
graph input and guards.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


def _find_last_block(llm: nn.Module) -> tuple[nn.ModuleList, int] | None:
    """(the LLM's block list, the last index), by the same rule as ``parallel.blocks`` (no per-family code)."""
    from amylum.parallel.blocks import find_layer_list

    blocks = find_layer_list(llm)
    if blocks is None or len(blocks) == 0:
        return None
    return blocks, len(blocks) - 1


class TargetRowsFeedForward:
    """Makes the last block's ``mlp`` compute only given rows while ``only(...)`` is active."""

    def __init__(self, blocks: nn.ModuleList, index: int) -> None:
        self._blocks, self._index = blocks, index
        self._block = blocks[index]
        self.mlp: nn.Module = self._block.mlp
        _restrict_to_rows(self.mlp)

    @classmethod
    def attach(cls, llm: nn.Module) -> "TargetRowsFeedForward | None":
        """The last block's ``mlp`` made row-restrictable; None (logged) where the LLM has no such module."""
        found = _find_last_block(llm)
        if found is None or not isinstance(getattr(found[0][found[1]], "mlp", None), nn.Module):
            log.info("LLM %s: no last block with an `mlp` module; its feed-forward runs on every row",
                     type(llm).__name__)
            return None
        return cls(*found)

    @property
    def rows(self) -> torch.Tensor | None:
        return self.mlp._amylum_rows

    def usable(self) -> bool:
        """False once the last block was wrapped (activation checkpointing recomputes it in backward,
        after the rows are gone) or replaced."""
        return self._blocks[self._index] is self._block

    @contextmanager
    def only(self, rows: torch.Tensor, shape: tuple[int, int]) -> Iterator[None]:
        """Within this scope the MLP computes only ``rows`` (flat indices into ``shape`` = (batch, seq))."""
        if self.mlp._amylum_rows is not None:
            raise RuntimeError("TargetRowsFeedForward.only is already active (re-entered forward?)")
        self.mlp._amylum_rows, self.mlp._amylum_shape = rows, (int(shape[0]), int(shape[1]))
        try:
            yield
        finally:
            self.mlp._amylum_rows, self.mlp._amylum_shape = None, None


def _restrict_to_rows(mlp: nn.Module) -> None:
    """Give ``mlp`` a subclass of its class whose forward honours ``mlp._amylum_rows``."""
    base = type(mlp)
    if getattr(base, "_amylum_row_restricted", False):
        return

    def forward(self, x, *args, **kwargs):
        rows = self._amylum_rows
        if rows is None:
            return base.forward(self, x, *args, **kwargs)
        if x.dim() != 3 or tuple(x.shape[:2]) != self._amylum_shape:
            raise RuntimeError(f"the last block's mlp got input of shape {tuple(x.shape)}, expected "
                               f"{self._amylum_shape} × hidden; set model.last_block_targets_only=false for this LLM")
        out = base.forward(self, x.reshape(-1, x.shape[-1]).index_select(0, rows).unsqueeze(0), *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise RuntimeError(f"the last block's mlp returned {type(out).__name__}, not a tensor; "
                               "set model.last_block_targets_only=false for this LLM")
        b, s = self._amylum_shape
        flat = out.reshape(-1, out.shape[-1])
        return flat.new_zeros(b * s, flat.shape[-1]).index_copy(0, rows, flat).view(b, s, -1)

    mlp.__class__ = type(f"TargetRows{base.__name__}", (base,), {"forward": forward, "_amylum_row_restricted": True})
    mlp._amylum_rows = None
    mlp._amylum_shape = None
