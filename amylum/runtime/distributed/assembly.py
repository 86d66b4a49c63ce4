"""One rank's part of a plan: its pipeline stage cut from the model, TP inside the stage, CP over
the sequence of an LLM stage with ``cp > 1``, FSDP over the stage's data-parallel replicas (and
its CP ranks, whose gradients are partial sums), and the executor that runs the stage's action list.

Every rank builds the whole model from the same seed (identical weights everywhere, like one
process), then keeps its stage. Process groups are created by every rank in one fixed order,
because ``new_group`` is collective over the whole world.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from amylum.parallel.context import apply_cp
from amylum.parallel.cp_stage import CPLLMStage
from amylum.parallel.fsdp import apply_fsdp
from amylum.parallel.layout import RankRole, RuntimeLayout
from amylum.parallel.pipeline import LLM, PipelineExecutor, build_stage
from amylum.parallel.tensor import apply_tp
from amylum.runtime.distributed.cp_shards import CPSettings, CPSharder, llm_work_model, mask_mode
from amylum.runtime.distributed.stage_actions import runtime_stage_graph, stage_action_lists


@dataclass
class RankStage:
    role: RankRole
    module: nn.Module  # the stage module the executor calls
    state: nn.Module  # its parameters under the full model's names (checkpoints, optimizer)
    executor: PipelineExecutor
    reporter: bool  # counts its replica's tokens and samples (last LLM stage, TP and CP index 0)
    first_llm: bool
    last_llm: bool
    tied: bool  # first and last LLM stage hold the tied embedding: count it once in the norm
    loss_reporter: bool = False  # holds a share of its replica's loss (last LLM stage, TP index 0, any CP index)
    sharder: CPSharder | None = None  # a CP LLM stage: cuts each microbatch into this rank's shard


@dataclass(frozen=True)
class _Groups:
    tp: dict[tuple[int, int, int], dist.ProcessGroup]  # (stage, replica, cp index) → its TP ranks
    cp: dict[tuple[int, int, int], dist.ProcessGroup]  # (stage, replica, tp index) → its CP ranks (cp > 1 only)
    dp: dict[tuple[int, int], dist.ProcessGroup]  # (stage, tp index) → its replicas × CP ranks (FSDP's reduction)
    tied: dict[tuple[int, int], dist.ProcessGroup]  # (replica, index in it) → first + last LLM stage


def llm_stage_order(layout: RuntimeLayout) -> list[int]:
    return [a.stage for a in sorted((a for a in layout.assignments if a.component == LLM), key=lambda a: a.layers[0])]


def _make_groups(layout: RuntimeLayout, tied: bool) -> _Groups:
    """Every group of the plan, on every rank, in one order decided by the layout alone."""
    tp, cp, dp, tied_groups = {}, {}, {}, {}
    for s in sorted(layout.stage_ranks):
        replicas, width, degree = layout.stage_ranks[s], layout.tp(s), layout.cp(s)
        for d, ranks in enumerate(replicas):
            for c in range(degree):
                tp[(s, d, c)] = dist.new_group(list(ranks[c * width : (c + 1) * width]))
            for j in range(width if degree > 1 else 0):
                cp[(s, d, j)] = dist.new_group([ranks[c * width + j] for c in range(degree)])
        for j in range(width):
            dp[(s, j)] = dist.new_group(list(layout.reduce_group(replicas[0][j])))
    order = llm_stage_order(layout)
    if tied and order[0] != order[-1]:
        first, last = layout.stage_ranks[order[0]], layout.stage_ranks[order[-1]]
        for d in range(len(first)):
            for j in range(len(first[d])):
                tied_groups[(d, j)] = dist.new_group([first[d][j], last[d][j]])
    return _Groups(tp, cp, dp, tied_groups)


def _stage_mesh(layout: RuntimeLayout, groups: _Groups, role: RankRole, device_type: str) -> DeviceMesh:
    """(dp, tp) mesh of this rank's stage, from groups every rank already created. Under CP the
    "dp" dimension holds the replicas × CP ranks (``RuntimeLayout.reduce_group``): FSDP's summing
    reduce-scatter over it is also the CP gradient reduction (``parallel/cp_fsdp.py``)."""
    ranks = torch.tensor(layout.stage_ranks[role.stage]).reshape(-1, layout.tp(role.stage))
    return DeviceMesh.from_group(
        [groups.dp[(role.stage, role.tp_index)], groups.tp[(role.stage, role.replica, role.cp_index)]],
        device_type, mesh=ranks, mesh_dim_names=("dp", "tp"),
    )


def _trainable(stage: nn.Module) -> bool:
    return any(p.requires_grad for p in stage.parameters())


def assemble_rank(model: nn.Module, layout: RuntimeLayout, rank: int, num_microbatches: int, schedule: str,
                  device: torch.device, cp: CPSettings = CPSettings(), planned=None) -> RankStage:
    """Cut, shard and wire ``model`` (the whole MultimodalLM, same seed on every rank) for ``rank``.

    ``cp``: how an LLM stage with ``cp > 1`` splits each microbatch (policy, K/V exchange, block).
    ``planned``: the CheckedPlan, whose plan, model and cluster order a ``zb`` schedule (stage_actions.py)."""
    role = layout.role(rank)
    replicas = len(layout.stage_ranks[role.stage])
    tied = bool(getattr(model.llm.config.get_text_config(), "tie_word_embeddings", False))
    groups = _make_groups(layout, tied)
    # Decided on the whole model, before the stage cut drops other stages' encoders: every rank
    # must derive the same action lists.
    graph = runtime_stage_graph(layout, model)
    # A replica may get a microbatch without images while another replica of the same sharded
    # encoder gets some: idle encoders then still run, so FSDP's collectives stay in step.
    model.run_idle_encoders = replicas > 1
    stage = build_stage(model, list(layout.assignments), role.stage)
    order = llm_stage_order(layout)
    first_llm, last_llm = role.stage == order[0], role.stage == order[-1]
    if hasattr(stage, "unused_parameters"):
        # HF keeps the embedding and the head in every LLM stage's copy; only the first and the
        # last use them. Unused copies must not train or be saved (they would go stale).
        for p in stage.unused_parameters():
            p.requires_grad_(False)
    degree = layout.cp(role.stage)
    sharder = None
    if degree > 1:
        # The work model reads the whole LLM's shape; every CP rank derives it the same way.
        sharder = CPSharder(degree, role.cp_index, cp, mask_mode(model), llm_work_model(model))
        apply_cp(stage.model)
        # FlexAttention's CP kernel on GPUs; its backward does not run on CPU, where the dense
        # reference (SDPA with the shard's mask) runs instead.
        stage = CPLLMStage(stage, groups.cp[(role.stage, role.replica, role.tp_index)],
                           backend="flex" if device.type == "cuda" else "reference")
    mesh = _stage_mesh(layout, groups, role, device.type)
    if mesh["tp"].size() > 1:
        apply_tp(stage.model.llm if role.stage in order else stage.branch.encoder, mesh["tp"])
    if _trainable(stage):
        # FSDP over the stage's replicas (a mesh of one rank when dp = 1: one code path, and the
        # parameters become DTensors that DCP saves and reshards).
        apply_fsdp(stage.model, mesh["dp"], root=stage)
    actions = stage_action_lists(graph, num_microbatches, schedule, planned)[role.stage]
    tied_here = tied and order[0] != order[-1] and (first_llm or last_llm)
    slot = layout.stage_ranks[role.stage][role.replica].index(rank)
    executor = PipelineExecutor(role.stage, stage, actions, device=device, layout=layout, rank=rank,
                                tied_group=groups.tied[(role.replica, slot)] if tied_here else None)
    return RankStage(role, stage, stage.model, executor, reporter=last_llm and role.tp_index == 0 and role.cp_index == 0,
                     first_llm=first_llm, last_llm=last_llm, tied=tied_here,
                     loss_reporter=last_llm and role.tp_index == 0, sharder=sharder)


