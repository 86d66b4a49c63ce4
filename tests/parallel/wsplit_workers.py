"""Zero-bubble (W split) pipeline workers: each rank runs one stage of the planner's zb lists."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.parallel.pipeline import LLM, PipelineExecutor, StageAssignment, build_stage, stage_graph_inputs  # noqa: E402
from amylum.planner.schedule import StageGraph  # noqa: E402
from amylum.planner.validate import check_schedule  # noqa: E402
from amylum.planner.zerobubble import zero_bubble_schedule  # noqa: E402
from compare import TOL  # noqa: E402,F401
from pipeline_workers import LAYOUTS, _microbatches, _model, _pipeline_steps  # noqa: E402

# A chain with every kind of stage: an encoder stage (no received input), a middle LLM stage whose
# received vision features need a gradient (and on text-only microbatches go unused), and the
# last LLM stage with the loss; the tied embedding is summed between stages 1 and 2.
CHAIN = [StageAssignment(0, "vision"), StageAssignment(1, LLM, (0, 1), ("audio",)), StageAssignment(2, LLM, (1, 2))]
# Caps of 3 held microbatches let every stage defer W past later F and B (with 1F1B's caps and
# uniform costs the scheduler puts each W right after its B, which would test little).
CAPS = {0: 3, 1: 3, 2: 3}
# Modality parallel with one LLM stage (stage 2): it embeds the features both encoder stages send
# and computes the loss, so its tied embedding joins its input path at two depths, the lookup
# (where the features are scattered in) and the fused loss.
MODALITY_PARALLEL = LAYOUTS["modality_parallel"]


def zero_bubble_lists(num_microbatches: int, chain: list = CHAIN) -> dict:
    inputs = stage_graph_inputs(chain)
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


class FedExecutor(PipelineExecutor):
    """A stage's executor in one process: RECV of activations returns the tensors in ``features``
    (``(mb, peer)`` → tensor, made here beforehand), SEND sends nothing. The input gradients that
    the SENDs would carry stay on the received tensors (``received``), to be compared."""

    def __init__(self, features: dict, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queues: dict[int, list] = {}  # peer → keys in the order the list receives them
        for a in self.actions:
            if a.op == "RECV":
                if a.data != "act":
                    raise ValueError(f"{a}: this executor has no peer to send it a gradient")
                self.queues.setdefault(a.peer, []).append((a.mb, a.peer))
        self.features, self.received = features, {}

    def _recv(self, peer: int, data: str) -> torch.Tensor:
        key = self.queues[peer].pop(0)
        self.received[key] = self.features[key].detach().clone()
        return self.received[key]

    def _dsts(self, peer: int, data: str) -> tuple[int, ...]:
        return ()


def single_llm_stage_split() -> dict[str, float]:
    """The LLM stage of MODALITY_PARALLEL on its zero-bubble list, in one process, against a fused
    backward of the same stage on the same encoder features: the largest difference of the loss,
    of each received feature's gradient and of each parameter gradient, by name."""
    layout, llm = MODALITY_PARALLEL, MODALITY_PARALLEL[-1].stage
    model = _model()
    mbs = _microbatches(model)
    count = sum(int((mb.labels[:, 1:] != -100).sum()) for mb in mbs)
    lists = zero_bubble_lists(len(mbs), layout)
    if deferred_ws(lists[llm]) == 0:
        raise AssertionError("the LLM stage's zero-bubble list defers no W; the test would not test the split")
    encoders = {a.stage: build_stage(copy.deepcopy(model), layout, a.stage) for a in layout if a.stage != llm}
    with torch.no_grad():
        features = {(i, s): enc(mb, {}) for i, mb in enumerate(mbs) for s, enc in encoders.items()}
    ref = build_stage(copy.deepcopy(model), layout, llm)
    ref_inputs = {k: t.clone().requires_grad_(True) for k, t in features.items()}
    ref_loss = sum(ref(mb, {s: ref_inputs[(i, s)] for s in encoders}, count) for i, mb in enumerate(mbs))
    ref_loss.backward()

    stage = build_stage(model, layout, llm)
    executor = FedExecutor(features, llm, stage, lists[llm], {a.stage: a.stage for a in layout})
    loss = executor.step(mbs, num_items_in_batch=count)
    diffs = {"loss": (loss - ref_loss.detach()).abs().item()}
    for key, t in executor.received.items():
        diffs[f"feature {key}"] = (t.grad - ref_inputs[key].grad).abs().max().item() if t.numel() else 0.0
    for (name, p), q in zip(stage.named_parameters(), ref.parameters()):
        if p.requires_grad:
            if p.grad is None or q.grad is None:
                diffs[name] = float("inf") if (p.grad is None) != (q.grad is None) else 0.0
            else:
                diffs[name] = (p.grad - q.grad).abs().max().item()
    return diffs
