"""Zero-bubble (W split) pipeline workers: each rank runs one stage of the planner's zb lists."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.parallel.pipeline import LLM, PipelineExecutor, StageAssignment, build_stage, stage_graph_inputs  # noqa: E402
from amylum.planner.schedule import StageGraph  # noqa: E402
from amylum.planner.validate import check_schedule  # noqa: E402
from amylum.planner.zerobubble import zero_bubble_schedule  # noqa: E402
from compare import TOL  # noqa: E402,F401
from pipeline_workers import _microbatches, _model, _pipeline_steps  # noqa: E402

# A chain with every kind of stage: an encoder stage (no received input), a middle LLM stage whose
# received vision features need a gradient (and on text-only microbatches go unused), and the
# last LLM stage with the loss; the tied embedding is summed between stages 1 and 2.
CHAIN = [StageAssignment(0, "vision"), StageAssignment(1, LLM, (0, 1), ("audio",)), StageAssignment(2, LLM, (1, 2))]
# Caps of 3 held microbatches let every stage defer W past later F and B (with 1F1B's caps and
# uniform costs the scheduler puts each W right after its B, which would test little).
CAPS = {0: 3, 1: 3, 2: 3}


def zero_bubble_lists(num_microbatches: int) -> dict:
    inputs = stage_graph_inputs(CHAIN)
    every = {s: True for s in inputs}
    graph = StageGraph(inputs=inputs, has_bwd=every, has_w=every)
    lists = zero_bubble_schedule(graph, num_microbatches, lambda s, op: 1.0, lambda a, b, d: 0.0, CAPS)
    check_schedule(lists, num_microbatches)
    return lists


def deferred_ws(actions: list) -> int:
    """How many W actions run after some other microbatch's F or B (not right behind their B)."""
    count, last_compute = 0, None
    for a in actions:
        if a.op == "W" and last_compute != ("B", a.mb):
            count += 1
        if a.op in ("F", "B", "W"):
            last_compute = (a.op, a.mb)
    return count


def zero_bubble_worker(rank, world_size):
    model = _model()
    ref = copy.deepcopy(model)
    names = {id(p): n for n, p in model.named_parameters()}
    mbs = _microbatches(model)
    count = sum(int((mb.labels[:, 1:] != -100).sum()) for mb in mbs)
    lists = zero_bubble_lists(len(mbs))
    if deferred_ws(lists[rank]) == 0:
        raise AssertionError(f"stage {rank}'s zero-bubble list defers no W; the test would not test the split")

    stage_module = build_stage(model, CHAIN, rank)
    group = dist.new_group([1, 2])  # tied embedding; collective: every rank creates it
    tied = group if rank in (1, 2) and model.llm.config.tie_word_embeddings else None
    executor = PipelineExecutor(rank, stage_module, lists[rank], {a.stage: a.stage for a in CHAIN}, tied_group=tied)
    named = [(names[id(p)], p) for p in stage_module.parameters()]
    return _pipeline_steps(executor, mbs, mbs, count, ref, named)
