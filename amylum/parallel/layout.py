"""From a planner ``Plan`` to what each rank runs: its stage, its replica, its TP, CP and
gradient-reduction groups, and its P2P peers.

Everything here is checked before any process group exists, so a plan that does not fit the
world size or the model fails with the reason instead of hanging a job at start-up.

A replica of a stage holds ``cp`` groups of ``tp`` adjacent ranks: ``ranks[replica][c·tp + t]``
(``StagePlan.ranks``). Only LLM stages have ``cp > 1``, all with the same degree: CP rank ``c``
of every LLM stage forms its own pipeline (``parallel/cp_stage.py``), since all hold the same
tokens of a microbatch. An encoder stage (cp 1) sends its features to every CP rank of the LLM
stage it feeds (each embeds the whole microbatch before keeping its tokens), and receives one
partial gradient from each, which it sums (each CP rank differentiates only its tokens' loss).

P2P between stages of different TP widths: after a block's row-wise projection every TP rank
holds the full activation (and after a column-wise input, the full input gradient), so a
consumer's TP rank ``j`` receives activations from producer rank ``j mod a`` and a producer's
TP rank ``k`` receives gradients from consumer rank ``k mod b`` (``a``, ``b``: the TP widths).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
    cp_index: int = 0


@dataclass(frozen=True)
class RuntimeLayout:
    assignments: tuple[StageAssignment, ...]
    stage_ranks: dict[int, tuple[tuple[int, ...], ...]]  # stage -> [replica][cp index · tp + tp index] -> rank
    stage_inputs: dict[int, tuple[int, ...]]
    world_size: int
    stage_cp: dict[int, int] = field(default_factory=dict)  # stage -> CP degree (absent: 1)

    def cp(self, stage: int) -> int:
        return self.stage_cp.get(stage, 1)

    def tp(self, stage: int) -> int:
        return len(self.stage_ranks[stage][0]) // self.cp(stage)

    def role(self, rank: int) -> RankRole:
        for stage, replicas in self.stage_ranks.items():
            for d, group in enumerate(replicas):
                if rank in group:
                    c, t = divmod(group.index(rank), self.tp(stage))
                    return RankRole(rank, stage, d, t, c)
        raise LayoutError(f"rank {rank} has no role in this plan (world size {self.world_size})")

    def _tp_groups(self, stage: int, replica: int) -> list[tuple[int, ...]]:
        """The replica's ranks of ``stage`` as its CP ranks' TP groups, in CP order."""
        group, tp = self.stage_ranks[stage][replica], self.tp(stage)
        return [group[c * tp : (c + 1) * tp] for c in range(self.cp(stage))]

    def tp_group(self, rank: int) -> tuple[int, ...]:
        """Same stage, replica and CP index: the ranks that split this rank's layers."""
        role = self.role(rank)
        return self._tp_groups(role.stage, role.replica)[role.cp_index]

    def cp_group(self, rank: int) -> tuple[int, ...]:
        """Same stage, replica and TP index: the ranks that split this rank's sequence."""
        role = self.role(rank)
        return tuple(g[role.tp_index] for g in self._tp_groups(role.stage, role.replica))

    def dp_group(self, rank: int) -> tuple[int, ...]:
        """Same stage, TP and CP index in every replica: the ranks that hold the same data-parallel copy."""
        role = self.role(rank)
        return tuple(self._tp_groups(role.stage, d)[role.cp_index][role.tp_index]
                     for d in range(len(self.stage_ranks[role.stage])))

    def reduce_group(self, rank: int) -> tuple[int, ...]:
        """Same stage and TP index, every replica and CP index (replica-major): the ranks whose
        gradients of the same parameters are summed, FSDP's mesh. CP ranks hold partial
        gradients (each of its own tokens' loss), so CP folds into the data-parallel reduction
        as in ``parallel/cp_fsdp.py``."""
        role = self.role(rank)
        return tuple(g[role.tp_index] for d in range(len(self.stage_ranks[role.stage]))
                     for g in self._tp_groups(role.stage, d))

    def _peer_groups(self, role: RankRole, peer_stage: int) -> list[tuple[int, ...]]:
        """The TP groups of ``peer_stage`` this rank talks to: the one at its own CP index when
        both stages are split the same way (an LLM stage chain), every CP rank's when only the
        peer is split (an encoder stage feeding a CP stage), the peer's only one otherwise."""
        groups = self._tp_groups(peer_stage, role.replica)
        mine = self.cp(role.stage)
        if mine == len(groups):
            return [groups[role.cp_index]]
        if len(groups) == 1 or mine == 1:
            return groups
        raise LayoutError(f"stages {role.stage} (cp {mine}) and {peer_stage} (cp {len(groups)}) are split "
                          "into different CP degrees; the runtime needs one CP degree for the LLM")

    def recv_sources(self, rank: int, peer_stage: int, data: str) -> tuple[int, ...]:
        """The ranks of ``peer_stage`` this rank receives ``data`` ("act" or "grad") from: one,
        or for the gradient of an encoder stage feeding a CP stage, one per CP rank (summed)."""
        role = self.role(rank)
        return tuple(g[role.tp_index % len(g)] for g in self._peer_groups(role, peer_stage))

    def recv_from(self, rank: int, peer_stage: int, data: str) -> int:
        """The one rank this rank receives ``data`` from, of ``peer_stage``."""
        sources = self.recv_sources(rank, peer_stage, data)
        if len(sources) != 1:
            raise LayoutError(f"rank {rank} receives {data} from {len(sources)} ranks of stage {peer_stage} "
                              f"({list(sources)}); use recv_sources")
        return sources[0]

    def send_to(self, rank: int, peer_stage: int, data: str) -> tuple[int, ...]:
        """The ranks of ``peer_stage`` this rank sends ``data`` to (possibly none)."""
        role = self.role(rank)
        width = self.tp(role.stage)
        return tuple(p for g in self._peer_groups(role, peer_stage) for j, p in enumerate(g) if j % width == role.tp_index)


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
        cp = getattr(s, "cp", 1)
        if cp < 1:
            errors.append(f"stage {s.id}: cp {cp} must be >= 1")
            continue
        if len(s.ranks) != plan.dp or any(len(g) != s.tp * cp for g in s.ranks):
            errors.append(f"stage {s.id}: ranks {s.ranks} do not form {plan.dp} replicas of TP {s.tp}"
                          + (f" x CP {cp}" if cp > 1 else ""))
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
        elif cp > 1:
            # CP splits the LLM's sequence; an encoder's items are whole images and clips.
            errors.append(f"stage {s.id}: cp {cp} on an encoder stage; context parallelism splits the LLM's "
                          "sequence only (encoder stages run with cp 1 and feed every CP rank)")
        elif len(owners) == 1:
            assignments.append(StageAssignment(s.id, owners.pop()))
        else:
            errors.append(f"stage {s.id}: holds parts of {sorted(owners)}; one encoder per encoder stage")
    llm_cps = {s.id: getattr(s, "cp", 1) for s in plan.stages if s.id in {a.stage for a in assignments if a.component == LLM}}
    if len(set(llm_cps.values())) > 1:
        # CP rank c of every LLM stage holds the same tokens and sends them to CP rank c of the next.
        errors.append(f"the LLM stages have CP degrees {llm_cps} (stage: cp); the runtime needs one CP degree "
                      "for all of them")
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
        stage_cp={s.id: getattr(s, "cp", 1) for s in plan.stages},
    )
