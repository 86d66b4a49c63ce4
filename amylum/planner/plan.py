"""A plan as data: stages (a DAG), their layers, TP width and ranks; DP, microbatching, schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

PLACEMENTS = ("modality_parallel", "colocated")
SCHEDULES = ("1f1b", "gpipe", "zb")  # zb: W split, ordered on the cost model (zerobubble.py)


@dataclass(frozen=True)
class StagePlan:
    id: int
    chain: str  # "llm", a branch name, or "colocated" (branches then LLM on one chain)
    layers: tuple[str, ...]
    tp: int = 1
    inputs: tuple[int, ...] = ()  # upstream stage ids
    ranks: tuple[tuple[int, ...], ...] = ()  # [dp replica][cp rank · tp + tp rank]
    # context parallelism: the replica's microbatch sequence is split over cp groups of tp
    # ranks (the LLM's layers only; encoders on such a stage run whole on every CP rank)
    cp: int = 1

    @property
    def width(self) -> int:
        """GPUs per replica of this stage: tp × cp."""
        return self.tp * self.cp


@dataclass(frozen=True)
class Plan:
    model: str
    placement: str
    dp: int
    microbatch_size: int
    num_microbatches: int  # per replica per iteration
    global_batch: int
    stages: tuple[StagePlan, ...]
    schedule: str = "1f1b"
    split_w: bool = False
    checkpointing: bool = False
    world_size: int = 0
    notes: dict = field(default_factory=dict)  # planner estimates, for the reader

    def stage(self, sid: int) -> StagePlan:
        for s in self.stages:
            if s.id == sid:
                return s
        raise KeyError(f"plan has no stage {sid}")

    @property
    def gpus_per_replica(self) -> int:
        return sum(s.tp * s.cp for s in self.stages)


def assign_ranks(tps: list[int], dp: int) -> list[tuple[tuple[int, ...], ...]]:
    """Rank layout: tp innermost, then cp, then dp, then stages (Megatron's order).

    ``tps``: each stage's width, tp × cp (a replica's ranks are cp groups of tp adjacent ranks).
    Stages are laid out widest first, so every TP group starts at a multiple of its width
    and never straddles a node (widths are powers of two that divide the node size).
    A stage's DP peers sit next to each other, so small DP groups stay inside a node.
    """
    order = sorted(range(len(tps)), key=lambda i: -tps[i])
    out: list = [None] * len(tps)
    base = 0
    for i in order:
        out[i] = tuple(tuple(range(base + d * tps[i], base + (d + 1) * tps[i])) for d in range(dp))
        base += dp * tps[i]
    return out
