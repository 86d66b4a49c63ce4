"""Pipeline workers: each rank runs one stage of a planner schedule; compared with one process."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset  # noqa: E402
from amylum.parallel.pipeline import LLM, PipelineExecutor, StageAssignment, build_stage, stage_graph_inputs  # noqa: E402
from amylum.planner.schedule import StageGraph, build_schedule  # noqa: E402
from amylum.planner.validate import check_schedule  # noqa: E402
from compare import TOL, compare_steps  # noqa: E402,F401
from model_batches import build_batch, random_inputs  # noqa: E402


LAYOUTS = {
    # three ranks: each encoder on its own stage (modality parallel), the LLM whole on the third
    "modality_parallel": [StageAssignment(0, "vision"), StageAssignment(1, "audio"), StageAssignment(2, LLM, (0, 2))],
    # two ranks: encoders colocated with the first LLM stage; the LLM split 1 + 1 layers (tied embeddings)
    "colocated_llm_split": [StageAssignment(0, LLM, (0, 1), ("vision", "audio")), StageAssignment(1, LLM, (1, 2))],
}


def _model():
    torch.manual_seed(0)
    model = build_preset("tiny-valm", vocab_size=64)
    apply_freeze(
        model,
        FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable"), "audio": BranchFreeze("trainable", "trainable")}),
    )
    return model


def _microbatches(model):
    rows = [
        [("m0", [("text", [3, 4], False), ("vision", 16), ("audio", 9), ("text", [5, 6, 7], True)])],
        [("m1", [("text", [3, 8, 9, 10, 11], True)])],  # text only: encoder stages send empty features
        [("m2", [("text", [3], False), ("audio", 5), ("text", [12, 13], True)])],
        [("m3", [("text", [3], False), ("vision", 16), ("vision", 16), ("text", [14, 15, 16], True)])],
    ]
    gen = torch.Generator().manual_seed(3)
    return [build_batch([r], ["vision", "audio"], random_inputs(model, gen)) for r in rows]


def _pipeline_steps(executor, mbs, mine, count, ref, named):
    def step():
        return executor.step(mine, num_items_in_batch=count)

    def ref_step():
        loss = sum(ref(mb, num_items_in_batch=count).loss for mb in mbs)
        loss.backward()
        return loss

    return compare_steps(step, ref_step, named, ref, label=f"stage {executor.stage}: ")


def pipeline_worker(rank, world_size, layout):
    assignments = LAYOUTS[layout]
    model = _model()
    ref = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    mbs = _microbatches(model)
    count = sum(int((mb.labels[:, 1:] != -100).sum()) for mb in mbs)

    inputs = stage_graph_inputs(assignments)
    trainable = {a.stage: True for a in assignments}  # every stage here has trainable weights
    graph = StageGraph(inputs=inputs, has_bwd=trainable, has_w=trainable)
    schedule = build_schedule(graph, len(mbs), "1f1b")
    check_schedule(schedule, len(mbs))

    stage_module = build_stage(model, assignments, rank)
    llm_stages = sorted((a for a in assignments if a.component == LLM), key=lambda a: a.layers[0])
    tied_ranks = sorted({llm_stages[0].stage, llm_stages[-1].stage})
    group = dist.new_group(tied_ranks)  # collective: every rank creates it
    tied = group if len(tied_ranks) > 1 and rank in tied_ranks and model.llm.config.tie_word_embeddings else None
    executor = PipelineExecutor(rank, stage_module, schedule[rank], {a.stage: a.stage for a in assignments}, tied_group=tied)
    named = [(names[id(p)], p) for p in stage_module.parameters()]
    return _pipeline_steps(executor, mbs, mbs, count, ref, named)


def dp_pp_worker(rank, world_size):
    """2 data-parallel replicas × 2 pipeline stages (FSDP inside each stage); each replica runs 2 microbatches."""
    from torch.distributed.device_mesh import init_device_mesh

    from amylum.parallel.fsdp import apply_fsdp

    assignments = LAYOUTS["colocated_llm_split"]
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "pp"))
    dp, stage = divmod(rank, 2)
    model = _model()
    ref = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    mbs = _microbatches(model)
    count = sum(int((mb.labels[:, 1:] != -100).sum()) for mb in mbs)
    mine = mbs[2 * dp : 2 * dp + 2]

    graph = StageGraph(inputs=stage_graph_inputs(assignments), has_bwd={0: True, 1: True}, has_w={0: True, 1: True})
    schedule = build_schedule(graph, len(mine), "1f1b")
    stage_module = build_stage(model, assignments, stage)
    model.run_idle_encoders = True  # stage 0 of a replica may get a text-only microbatch while its DP peer does not
    # FSDP swaps parameters for sharded ones: map by name within the stage, not by identity.
    stage_names = {n: names[id(p)] for n, p in stage_module.named_parameters()}
    apply_fsdp(stage_module.model, mesh["dp"], root=stage_module)
    groups = [dist.new_group([2 * d, 2 * d + 1]) for d in range(2)]  # tied embeddings: first + last stage per replica
    executor = PipelineExecutor(stage, stage_module, schedule[stage], {0: 2 * dp, 1: 2 * dp + 1}, tied_group=groups[dp])
    named = [(stage_names[n], p) for n, p in stage_module.named_parameters()]
    # each replica's last stage holds part of the loss: the sum is not compared per rank
    return _pipeline_steps(_NoLoss(executor), mbs, mine, count, ref, named)


class _NoLoss:
    """An executor whose loss is a partial sum (one DP replica): compare gradients only."""

    def __init__(self, executor):
        self.executor, self.stage = executor, executor.stage

    def step(self, *args, **kwargs):
        self.executor.step(*args, **kwargs)
        return None
