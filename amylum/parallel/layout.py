"""From a planner ``Plan`` to what each rank runs: its stage, its replica, its TP peers and P2P peers.

Everything here is checked before any process group exists, so a plan that does not fit the
world size or the model fails with the reason instead of hanging a job at start-up.

P2P between stages of different TP widths: after a block's row-wise projection every TP rank
holds the full activation (and after a column-wise input, the full input gradient), so a
consumer's TP rank ``j`` receives activations from producer rank ``j mod a`` and a producer's
TP rank ``k`` receives gradients from consumer rank ``k mod b`` (``a``, ``b``: the TP widths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from amylum.parallel.pipeline.stages import LLM, StageAssignment

_LLM_LAYER = re.compile(r"^llm\.layers\.(\d+)$")


class LayoutError(ValueError):
    """A plan the runtime cannot execute with this model and world size."""


@dataclass(frozen=True)
class RankRole:
    rank: int
    stage: int
    replica: int  # data-parallel index
    tp_index: int


@dataclass(frozen=True)
class RuntimeLayout:
    assignments: tuple[StageAssignment, ...]
    stage_ranks: dict[int, tuple[tuple[int, ...], ...]]  # stage -> [replica][tp index] -> rank
    stage_inputs: dict[int, tuple[int, ...]]
    world_size: int

    def role(self, rank: int) -> RankRole:
        for stage, replicas in self.stage_ranks.items():
            for d, group in enumerate(replicas):
                if rank in group:
                    return RankRole(rank, stage, d, group.index(rank))
        raise LayoutError(f"rank {rank} has no role in this plan (world size {self.world_size})")

    def tp_group(self, rank: int) -> tuple[int, ...]:
        role = self.role(rank)
        return self.stage_ranks[role.stage][role.replica]

    def dp_group(self, rank: int) -> tuple[int, ...]:
        """The ranks holding the same stage and TP index in every replica (FSDP's mesh)."""
        role = self.role(rank)
        return tuple(group[role.tp_index] for group in self.stage_ranks[role.stage])

    def recv_from(self, rank: int, peer_stage: int, data: str) -> int:
        """The one rank this rank receives ``data`` ("act" or "grad") from, of ``peer_stage``."""
        role = self.role(rank)
        peers = self.stage_ranks[peer_stage][role.replica]
        return peers[role.tp_index % len(peers)]

    def send_to(self, rank: int, peer_stage: int, data: str) -> tuple[int, ...]:
        """The ranks of ``peer_stage`` this rank sends ``data`` to (possibly none)."""
        role = self.role(rank)
        mine = self.stage_ranks[role.stage][role.replica]
        peers = self.stage_ranks[peer_stage][role.replica]
        return tuple(p for j, p in enumerate(peers) if j % len(mine) == role.tp_index)


def _encoder_of(layer: str, encoders: list[str]) -> str | None:
    head = layer.split(".", 1)[0]
    return head if head in encoders else None


def layout_from_plan(plan, encoders: list[str], num_llm_layers: int, world_size: int) -> RuntimeLayout:
    """Check ``plan`` against the model (encoder names, LLM depth) and ``world_size``; build the layout."""
    errors = []
    if plan.world_size and plan.world_size != world_size:
        errors.append(f"the plan is for {plan.world_size} ranks but {world_size} processes were launched")
    ranks = sorted(r for s in plan.stages for group in s.ranks for r in group)
    if ranks != list(range(world_size)):
        errors.append(f"the plan's stages use ranks {ranks[:8]}{'…' if len(ranks) > 8 else ''}; expected each of 0..{world_size - 1} once")
    assignments: list[StageAssignment] = []
    for s in plan.stages:
        if len(s.ranks) != plan.dp or any(len(g) != s.tp for g in s.ranks):
            errors.append(f"stage {s.id}: ranks {s.ranks} do not form {plan.dp} replicas of TP {s.tp}")
        llm_layers = [int(m.group(1)) for m in map(_LLM_LAYER.match, s.layers) if m]
        owners = {_encoder_of(layer, encoders) for layer in s.layers} - {None}
        unknown = [layer for layer in s.layers if not layer.startswith("llm.") and _encoder_of(layer, encoders) is None]
        if unknown:
            errors.append(f"stage {s.id}: layers {unknown[:3]} belong to no module of the model (encoders {encoders})")
            continue
        if llm_layers or any(layer.startswith("llm.") for layer in s.layers):
            if llm_layers and llm_layers != list(range(llm_layers[0], llm_layers[-1] + 1)):
                errors.append(f"stage {s.id}: LLM layers {llm_layers} are not contiguous")
                continue
            span = (llm_layers[0], llm_layers[-1] + 1) if llm_layers else None
            if span is None:
                errors.append(f"stage {s.id}: holds no LLM block; the runtime needs at least one block per LLM stage")
                continue
            assignments.append(StageAssignment(s.id, LLM, span, tuple(sorted(owners))))
        elif len(owners) == 1:
            assignments.append(StageAssignment(s.id, owners.pop()))
        else:
            errors.append(f"stage {s.id}: holds parts of {sorted(owners)}; one encoder per encoder stage")
    for name in encoders:  # the runtime runs an encoder branch whole on one stage
        holders = [s.id for s in plan.stages if any(_encoder_of(layer, encoders) == name for layer in s.layers)]
        if len(holders) > 1:
            errors.append(f"encoder {name!r} is split over stages {holders}; the runtime runs each encoder on one stage")
    covered = sorted(i for a in assignments if a.component == LLM for i in range(*a.layers))
    if not errors and covered != list(range(num_llm_layers)):
        errors.append(f"the plan's LLM stages hold blocks {covered}; the model has {num_llm_layers}")
    if errors:
        raise LayoutError("plan cannot run here:\n  - " + "\n  - ".join(errors))
    return RuntimeLayout(
        assignments=tuple(assignments),
        stage_ranks={s.id: tuple(tuple(g) for g in s.ranks) for s in plan.stages},
        stage_inputs={s.id: tuple(s.inputs) for s in plan.stages},
        world_size=world_size,
    )
