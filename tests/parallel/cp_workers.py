"""Context-parallel workers: each rank runs its shard; loss and gradients vs one process."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

from amylum.attention import mask_spec  # noqa: E402
from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset  # noqa: E402
from amylum.parallel.context import allreduce_gradients, apply_cp, cp_forward, shard_batch  # noqa: E402
from amylum.parallel.cp_exchange import KVTraffic  # noqa: E402
from amylum.planner.cp_balance import POLICIES, CPWorkModel, plan_cp, rank_work  # noqa: E402
from model_batches import build_batch, random_inputs  # noqa: E402

TOL = 2e-5  # fp32 on CPU: only summation order differs
OVERLAP_TOL = 1e-5  # the overlapped exchange vs one process and vs the plain CP run
WORK = CPWorkModel(1.0, 2.0, 40.0, 80.0)  # a layer where the per-token part matters at these lengths


def _model():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    apply_freeze(model, FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable")}))
    return model


def _batch(model, case: str):
    """``long``: two rows, a sample with two images (bidirectional segments) and a packed row.
    ``short``: 5 tokens (under one block per rank); ``tiny``: 3 tokens (fewer than 4 ranks).
    ``packed``: one row of six short samples (two with an image), the mask-aware exchange's
    best case; ``single``: one sample with three images, where late text sees everything."""
    t = lambda n, k, train=True: ("text", [(7 * i + k) % 60 + 2 for i in range(n)], train)  # noqa: E731
    if case == "long":
        layout = [
            [("a", [t(5, 1, False), ("vision", 16), t(9, 2), ("vision", 16), t(12, 3)])],
            [("b", [t(6, 4, False), ("vision", 16), t(7, 5)]), ("c", [t(11, 6)]), ("d", [t(4, 7, False), t(3, 8)])],
        ]
    elif case == "packed":
        layout = [[("p0", [t(6, 1, False), t(5, 2)]), ("p1", [t(3, 3, False), ("vision", 16), t(6, 4)]),
                   ("p2", [t(9, 5)]), ("p3", [t(4, 6, False), t(7, 7)]), ("p4", [("vision", 16), t(5, 8)]),
                   ("p5", [t(8, 9)])]]
    elif case == "single":
        layout = [[("s", [t(4, 1, False), ("vision", 16), t(6, 2), ("vision", 16), t(5, 3), ("vision", 16), t(8, 4)])]]
    elif case == "short":
        layout = [[("s", [t(2, 1, False), t(3, 2)])]]
    else:
        layout = [[("s", [t(3, 1)])]]
    return build_batch(layout, ["vision"], random_inputs(model, torch.Generator().manual_seed(1)))


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if p.requires_grad}


def _worst(loss, grads, ref_loss, ref_grads):
    worst = abs(loss - ref_loss)
    for name, g in ref_grads.items():
        worst = max(worst, (grads[name] - g).abs().max().item())
    return worst


def _reference(model, batch):
    out = model(batch)
    out.loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return out.loss.item(), grads


def _cp_run(model, batch, policy, block_size, rank, world, exchange="allgather", traffic=None, overlap=False):
    spec = mask_spec(batch, model.mask_mode)
    assignment = plan_cp(spec, cp=world, policy=policy, block_size=block_size, model=WORK)
    shard = shard_batch(batch, assignment, rank, mode=model.mask_mode, exchange=exchange, overlap=overlap)
    out = cp_forward(model, batch, shard, group=None, traffic=traffic)
    out.loss.backward()
    allreduce_gradients(model)
    total = out.loss.detach().clone()
    dist.all_reduce(total)
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    # every token exactly once over the ranks, and positions global
    index = torch.zeros(batch.input_ids.numel(), dtype=torch.long)
    gathered = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([shard.num_local]))
    index[shard.index] = 1
    dist.all_reduce(index)
    assert int(index.min()) == 1 and int(index.max()) == 1, "a token is held by no rank or by two"
    assert torch.equal(shard.position_ids[0], batch.position_ids.reshape(-1)[shard.index])
    return float(total), grads, [int(g) for g in gathered]


def cp_worker(rank, world_size):
    """Every policy on a long multimodal batch (block 4), a short one and a tiny one (empty ranks at 4)."""
    ref = _model()
    model = copy.deepcopy(ref)
    apply_cp(model)
    results = {}
    for case, block in (("long", 4), ("short", 128), ("tiny", 128)):
        batch = _batch(ref, case)
        ref_loss, ref_grads = _reference(ref, batch)
        # short/tiny cases exercise the block shrinking and empty shards; two policies suffice
        for policy in POLICIES if case == "long" else ("uniform", "balanced"):
            loss, grads, counts = _cp_run(model, batch, policy, block, rank, world_size)
            results[(policy, case)] = (_worst(loss, grads, ref_loss, ref_grads), counts)
            if policy == "balanced":
                # the exchange overlapped with the own keys' attention: equal to one process and to
                # the plain CP run (tiny at 4 ranks: an empty rank sees none of its own keys)
                o_loss, o_grads, o_counts = _cp_run(model, batch, policy, block, rank, world_size, overlap=True)
                worst = max(_worst(o_loss, o_grads, ref_loss, ref_grads), _worst(o_loss, o_grads, loss, grads))
                results[(policy + "+overlap", case)] = (worst, o_counts)
    return results


def sparse_worker(rank, world_size):
    """The mask-aware exchange: loss and gradients vs one process, and tokens received vs the planner.

    Returns per (policy, case): (worst difference, tokens received per layer as measured,
    the planner's count for the sparse exchange, the all-gather's count).
    """
    ref = _model()
    model = copy.deepcopy(ref)
    apply_cp(model)
    layers = model.llm.config.num_hidden_layers
    results = {}
    for case, block in (("packed", 4), ("single", 4), ("long", 4), ("short", 128), ("tiny", 128)):
        batch = _batch(ref, case)
        ref_loss, ref_grads = _reference(ref, batch)
        spec = mask_spec(batch, model.mask_mode)
        for policy in ("uniform", "balanced", "contiguous") if block == 4 else ("balanced",):
            work = rank_work(plan_cp(spec, cp=world_size, policy=policy, block_size=block, model=WORK), spec,
                             model=WORK, kv_bytes_per_token=1)
            planned = (int(work.kv_bytes_sparse[rank]), int(work.kv_bytes_allgather[rank]))
            traffic = KVTraffic()
            loss, grads, _counts = _cp_run(model, batch, policy, block, rank, world_size, "sparse", traffic)
            assert len(traffic.received_tokens) == layers, "one exchange per decoder layer"
            results[(policy, case)] = (_worst(loss, grads, ref_loss, ref_grads), traffic.received_tokens[0], *planned)
            if policy == "contiguous" or case in ("short", "tiny"):
                # overlapped: equal to one process and to the plain sparse run (packed rows under
                # contiguous: a rank whose queries need no other rank's keys receives nothing)
                traffic = KVTraffic()
                o_loss, o_grads, _ = _cp_run(model, batch, policy, block, rank, world_size, "sparse", traffic, True)
                worst = max(_worst(o_loss, o_grads, ref_loss, ref_grads), _worst(o_loss, o_grads, loss, grads))
                results[(policy + "+overlap", case)] = (worst, traffic.received_tokens[0], *planned)
    return results


def cp_fsdp_worker(rank, world_size, exchange):
    """CP 2 × DP 2 with FSDP2 over the flattened dp × cp ranks, 3 AdamW steps vs one process.

    Replica 0 trains on the two-row multimodal batch, replica 1 on the packed row; the
    reference runs both microbatches and sums (the loss divides by the step's total targets).
    """
    from torch.distributed.tensor import DTensor

    from amylum.parallel.cp_fsdp import apply_cp_fsdp, cp_dp_mesh
    from compare import compare_steps

    ref = _model()
    model = copy.deepcopy(ref)
    model.run_idle_encoders = True  # replicas whose microbatch lacks an image still run the encoder
    ref.run_idle_encoders = True
    mesh = cp_dp_mesh(2, 2)
    dp_rank, cp_rank = mesh["dp"].get_local_rank(), mesh["cp"].get_local_rank()
    batches = [_batch(ref, "long"), _batch(ref, "packed")]
    total = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
    mine = batches[dp_rank]
    assignment = plan_cp(mask_spec(mine, model.mask_mode), cp=2, policy="balanced", block_size=4, model=WORK)
    shard = shard_batch(mine, assignment, cp_rank, mode=model.mask_mode, exchange=exchange)
    step_module = apply_cp_fsdp(model, mesh)
    assert isinstance(next(model.llm.parameters()), DTensor), "FSDP2 did not shard the LLM"

    def step():
        loss = step_module(mine, shard, group=mesh["cp"].get_group(), num_items_in_batch=total).loss
        loss.backward()
        summed = loss.detach().clone()
        dist.all_reduce(summed)  # every rank holds part of the step's loss
        return summed

    ref_step = _reference_step(ref, batches, total)
    return compare_steps(step, ref_step, list(model.named_parameters()), ref, label=f"cp×fsdp {exchange}: ")


def cp_pipeline_worker(rank, world_size, exchange):
    """2 pipeline stages × CP 2 (4 ranks; rank = stage · 2 + cp index), 1F1B over 4 microbatches.

    Stage 0 embeds (vision encoder colocated) and runs LLM layer 0, stage 1 layer 1 and the loss;
    CP rank c of stage 0 feeds CP rank c of stage 1. Tied embeddings are summed over the first
    and last stage of each CP index, then gradients over each stage's CP group.
    """
    from amylum.parallel.cp_stage import CPLLMStage, CPMicrobatch
    from amylum.parallel.pipeline import LLM, PipelineExecutor, StageAssignment, build_stage, stage_graph_inputs
    from amylum.planner.schedule import StageGraph, build_schedule
    from compare import compare_steps

    stage, cp_rank = divmod(rank, 2)
    cp_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
    tied_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
    ref = _model()
    model = copy.deepcopy(ref)
    apply_cp(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assignments = [StageAssignment(0, LLM, (0, 1), ("vision",)), StageAssignment(1, LLM, (1, 2))]
    batches = [_batch(ref, case) for case in ("long", "packed", "single", "short")]
    count = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
    items = []
    for b in batches:
        block = 4 if b.input_ids.numel() > 8 else 128
        a = plan_cp(mask_spec(b, model.mask_mode), cp=2, policy="balanced", block_size=block, model=WORK)
        items.append(CPMicrobatch(b, shard_batch(b, a, cp_rank, mode=model.mask_mode, exchange=exchange)))
    graph = StageGraph(inputs=stage_graph_inputs(assignments), has_bwd={0: True, 1: True}, has_w={0: True, 1: True})
    schedule = build_schedule(graph, len(items), "1f1b")
    stage_module = CPLLMStage(build_stage(model, assignments, stage), cp_groups[stage])
    tied = tied_groups[cp_rank] if model.llm.config.tie_word_embeddings else None
    executor = PipelineExecutor(stage, stage_module, schedule[stage], {0: cp_rank, 1: 2 + cp_rank}, tied_group=tied)
    named = [(names[id(p)], p) for p in stage_module.parameters()]

    def step():
        loss = executor.step(items, num_items_in_batch=count)
        allreduce_gradients(stage_module, cp_groups[stage])
        if loss is None:
            return None
        dist.all_reduce(loss, group=cp_groups[stage])  # each CP rank of the last stage holds part
        return loss

    ref_step = _reference_step(ref, batches, count)
    return compare_steps(step, ref_step, named, ref, label=f"pp×cp stage {stage} cp {cp_rank}: ")


def cp_tp_worker(rank, world_size, exchange):
    """CP 2 × TP 2 (4 processes, TP innermost: rank = cp index · 2 + tp index), 3 AdamW steps.

    The LLM's blocks are TP-sharded (each TP rank computes its heads); each TP rank exchanges
    its heads' K/V over its CP group. Gradients: summed over the CP group, per TP shard.
    """
    from torch.distributed.device_mesh import init_device_mesh

    from amylum.parallel.tensor import apply_tp
    from compare import compare_steps

    ref = _model()
    model = copy.deepcopy(ref)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("cp", "tp"))
    cp_rank, cp_group = mesh["cp"].get_local_rank(), mesh["cp"].get_group()
    apply_tp(model.llm, mesh["tp"])
    apply_cp(model)
    from torch.distributed.tensor import DTensor

    assert isinstance(model.llm.get_decoder().layers[0].self_attn.k_proj.weight, DTensor), "TP did not shard K/V"
    batches = [_batch(ref, "long"), _batch(ref, "packed")]
    count = sum(int((b.labels[:, 1:] != -100).sum()) for b in batches)
    shards = [shard_batch(b, plan_cp(mask_spec(b, model.mask_mode), cp=2, policy="balanced", block_size=4, model=WORK),
                          cp_rank, mode=model.mask_mode, exchange=exchange) for b in batches]

    def step():
        loss = sum(cp_forward(model, b, s, group=cp_group, num_items_in_batch=count).loss for b, s in zip(batches, shards))
        loss.backward()
        allreduce_gradients(model, cp_group)
        summed = loss.detach().clone()
        dist.all_reduce(summed, group=cp_group)  # TP peers hold the same partial sum
        return summed

    ref_step = _reference_step(ref, batches, count)
    return compare_steps(step, ref_step, list(model.named_parameters()), ref, label=f"cp×tp {exchange}: ")


def _reference_step(ref, batches, num_items):
    """One process's step over the same microbatches: the summed loss, gradients accumulated."""

    def ref_step():
        loss = sum(ref(b, num_items_in_batch=num_items).loss for b in batches)
        loss.backward()
        return loss

    return ref_step


def each_exchange(rank, world_size, worker_name):
    """Run one composition worker with both K/V exchanges in one process world: the spawn and
    the torch/transformers imports, most of such a test's time, are paid once."""
    worker = globals()[worker_name]
    return {exchange: worker(rank, world_size, exchange) for exchange in ("allgather", "sparse")}
