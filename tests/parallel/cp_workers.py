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
from amylum.planner.cp_balance import POLICIES, CPWorkModel, plan_cp  # noqa: E402
from model_batches import build_batch, random_inputs  # noqa: E402

TOL = 2e-5  # fp32 on CPU: only summation order differs
WORK = CPWorkModel(1.0, 2.0, 40.0, 80.0)  # a layer where the per-token part matters at these lengths


def _model():
    torch.manual_seed(0)
    model = build_preset("tiny-vlm", vocab_size=64)
    apply_freeze(model, FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable")}))
    return model


def _batch(model, case: str):
    """``long``: two rows, a sample with two images (bidirectional segments) and a packed row.
    ``short``: 5 tokens (under one block per rank); ``tiny``: 3 tokens (fewer than 4 ranks)."""
    t = lambda n, k, train=True: ("text", [(7 * i + k) % 60 + 2 for i in range(n)], train)  # noqa: E731
    if case == "long":
        layout = [
            [("a", [t(5, 1, False), ("vision", 16), t(9, 2), ("vision", 16), t(12, 3)])],
            [("b", [t(6, 4, False), ("vision", 16), t(7, 5)]), ("c", [t(11, 6)]), ("d", [t(4, 7, False), t(3, 8)])],
        ]
    elif case == "short":
        layout = [[("s", [t(2, 1, False), t(3, 2)])]]
    else:
        layout = [[("s", [t(3, 1)])]]
    return build_batch(layout, ["vision"], random_inputs(model, torch.Generator().manual_seed(1)))


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters() if p.requires_grad}


def _reference(model, batch):
    out = model(batch)
    out.loss.backward()
    grads = _grads(model)
    model.zero_grad(set_to_none=True)
    return out.loss.item(), grads


def _cp_run(model, batch, policy, block_size, rank, world):
    spec = mask_spec(batch, model.mask_mode)
    assignment = plan_cp(spec, cp=world, policy=policy, block_size=block_size, model=WORK)
    shard = shard_batch(batch, assignment, rank, mode=model.mask_mode)
    out = cp_forward(model, batch, shard, group=None)
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
            worst = abs(loss - ref_loss)
            for name, g in ref_grads.items():
                worst = max(worst, (grads[name] - g).abs().max().item())
            results[(policy, case)] = (worst, counts)
    return results
