"""Plan-driven execution: a planner Plan → layout → stages, TP groups and P2P peers per rank."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.parallel.layout import layout_from_plan  # noqa: E402
from amylum.parallel.pipeline import PipelineExecutor, build_stage  # noqa: E402
from amylum.parallel.tensor import apply_tp  # noqa: E402
from amylum.planner.plan import Plan, StagePlan  # noqa: E402
from amylum.planner.schedule import StageGraph, build_schedule  # noqa: E402
from compare import TOL  # noqa: E402,F401
from pipeline_workers import _microbatches, _model, _pipeline_steps  # noqa: E402


def modality_parallel_plan() -> Plan:
    """Vision on rank 2, audio on rank 3 (each TP 1), the LLM on ranks 0–1 with TP 2."""
    enc = lambda m, first: (f"{m}.encoder.{first}", f"{m}.encoder.layers.0", f"{m}.encoder.layers.1", f"{m}.projector")  # noqa: E731
    return Plan(
        model="tiny-valm", placement="modality_parallel", dp=1, microbatch_size=1, num_microbatches=4, global_batch=4,
        stages=(
            StagePlan(0, "vision", enc("vision", "patch_embed"), tp=1, ranks=((2,),)),
            StagePlan(1, "audio", enc("audio", "conv"), tp=1, ranks=((3,),)),
            StagePlan(2, "llm", ("llm.embed", "llm.layers.0", "llm.layers.1", "llm.head"), tp=2, inputs=(0, 1), ranks=((0, 1),)),
        ),
        world_size=4,
    )


def plan_worker(rank, world_size):
    plan = modality_parallel_plan()
    layout = layout_from_plan(plan, ["vision", "audio"], 2, world_size)
    role = layout.role(rank)
    # every rank creates every group, in one order (new_group is collective)
    groups = {(s, d): dist.new_group(list(g)) for s, reps in layout.stage_ranks.items() for d, g in enumerate(reps)}

    model = _model()
    ref = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    mbs = _microbatches(model)
    count = sum(int((mb.labels[:, 1:] != -100).sum()) for mb in mbs)

    stage_module = build_stage(model, list(layout.assignments), role.stage)
    stage_names = {n: names[id(p)] for n, p in stage_module.named_parameters()}
    tp_ranks = layout.tp_group(rank)
    if len(tp_ranks) > 1:
        mesh = DeviceMesh.from_group(groups[(role.stage, role.replica)], "cpu")
        apply_tp(stage_module.model.llm, mesh)
    flags = {s: True for s in layout.stage_ranks}
    schedule = build_schedule(StageGraph(inputs=layout.stage_inputs, has_bwd=flags, has_w=flags), len(mbs), "1f1b")
    executor = PipelineExecutor(role.stage, stage_module, schedule[role.stage], layout=layout, rank=rank)

    named = [(stage_names[n], p) for n, p in stage_module.named_parameters()]
    return _pipeline_steps(executor, mbs, mbs, count, ref, named)
