"""Context parallelism in a plan-driven run: each microbatch of a CP LLM stage gets this rank's shard.

Every CP rank of every LLM stage of a replica reads the same microbatches (the loader is indexed
by the replica) and computes each one's token assignment itself, from that microbatch's mask
(``plan_cp``: pure host-side numpy, deterministic). So all of them hold the same assignment
without a broadcast, and CP rank ``c`` of one LLM stage holds the same tokens as CP rank ``c`` of
the next, which is what lets each CP index form its own pipeline (``parallel/cp_stage.py``).
The shard travels with its microbatch (``CPMicrobatch``): nothing is cached between batches.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from amylum.attention.mask import mask_spec
from amylum.data.batch import MultimodalBatch
from amylum.parallel.context import CPShard, shard_batch
from amylum.planner.cp_balance import CPWorkModel, plan_cp


@dataclass(frozen=True)
class CPSettings:
    """How CP stages split a microbatch (``[parallel]`` cp_policy, cp_exchange, cp_block, cp_overlap)."""

    policy: str = "balanced"
    exchange: str = "allgather"
    block_size: int = 128
    overlap: bool = False

    @classmethod
    def from_config(cls, cfg) -> "CPSettings":
        p = cfg.parallel
        return cls(p.cp_policy, p.cp_exchange, p.cp_block, p.cp_overlap)


def llm_work_model(model: nn.Module) -> CPWorkModel:
    """The cost per attention entry and per token of one of ``model``'s LLM layers: the weights
    ``balanced`` and ``makespan`` even out (the planner's cost model at nominal GPU rates)."""
    c = model.llm.config.get_text_config()
    heads = c.num_attention_heads
    return CPWorkModel.from_shape(hidden=c.hidden_size, heads=heads,
                                  kv_heads=getattr(c, "num_key_value_heads", None) or heads,
                                  head_dim=getattr(c, "head_dim", None), ffn=c.intermediate_size)


def mask_mode(model: nn.Module) -> str:
    """The mask the single-process model trains with: HF's own attention ("hf") is plain causal,
    whatever the model's ``mask_mode``; CP attention must see the same one."""
    return "causal" if getattr(model, "attention_backend", None) == "hf" else model.mask_mode


@dataclass(frozen=True)
class CPSharder:
    """Cuts a microbatch (on the host) into CP rank ``index``'s shard of ``cp``."""

    cp: int
    index: int
    settings: CPSettings
    mask_mode: str  # the model's: the shard's key intervals are the single-process mask's
    work: CPWorkModel

    def shard(self, batch: MultimodalBatch) -> CPShard:
        s = self.settings
        assignment = plan_cp(mask_spec(batch, self.mask_mode), cp=self.cp, policy=s.policy, block_size=s.block_size,
                             model=self.work)
        return shard_batch(batch, assignment, self.index, mode=self.mask_mode, exchange=s.exchange, overlap=s.overlap)
