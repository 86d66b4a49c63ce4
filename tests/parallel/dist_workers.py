"""Workers for the gloo tests: each compares a parallelised model with a single-process reference."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset  # noqa: E402
from amylum.parallel.fsdp import apply_fsdp  # noqa: E402
from amylum.parallel.tensor import apply_tp  # noqa: E402
from compare import TOL, compare_steps  # noqa: E402,F401
from model_batches import build_batch, random_inputs  # noqa: E402


def _model(seed=0):
    torch.manual_seed(seed)
    model = build_preset("tiny-vlm", vocab_size=64)
    apply_freeze(model, FreezeSpec(llm="trainable", encoders={"vision": BranchFreeze("frozen", "trainable")}))
    return model


def _global_batch(model, rows=4):
    layout = []
    for r in range(rows):
        if r % 2 == 0:  # image rows and text-only rows alternate: some ranks may see no image
            layout.append([(f"r{r}", [("text", [5, 6 + r], False), ("vision", 16), ("text", [7, 8, 9 + r], True)])])
        else:
            layout.append([(f"r{r}", [("text", [3, 4, 5 + r, 6, 7], True)])])
    return build_batch(layout, ["vision"], random_inputs(model, torch.Generator().manual_seed(1)))


def _run(model, ref, local, full_batch, *, all_reduce_loss: bool) -> float:
    """Train ``model`` on ``local`` rows and ``ref`` on all rows; compare (names are unchanged by FSDP/TP)."""
    count = int((full_batch.labels[:, 1:] != -100).sum())

    def step():
        loss = model(local, num_items_in_batch=count).loss
        loss.backward()
        total = loss.detach().clone()
        if all_reduce_loss:  # each rank holds a part of the global sum
            dist.all_reduce(total)
        return total

    def ref_step():
        loss = ref(full_batch, num_items_in_batch=count).loss
        loss.backward()
        return loss

    return compare_steps(step, ref_step, list(model.named_parameters()), ref)


def fsdp_worker(rank, world_size):
    """FSDP2 over all ranks; rank r trains on rows 2r and 2r + 1; text-only rows land on some ranks."""
    model = _model()
    ref = copy.deepcopy(model)
    model.run_idle_encoders = True
    full = _global_batch(model, rows=2 * world_size)
    local = full.select_rows([2 * rank, 2 * rank + 1])
    apply_fsdp(model, init_device_mesh("cpu", (world_size,)))
    return _run(model, ref, local, full, all_reduce_loss=True)


def fsdp_text_only_rank_worker(rank, world_size):
    """Rank 1 sees only text: without idle-encoder runs its collectives would fall out of step."""
    model = _model()
    ref = copy.deepcopy(model)
    model.run_idle_encoders = True
    full = _global_batch(model, rows=4)
    local = full.select_rows([0, 2] if rank == 0 else [1, 3])
    apply_fsdp(model, init_device_mesh("cpu", (world_size,)))
    return _run(model, ref, local, full, all_reduce_loss=True)


def tp_worker(rank, world_size, vision_tp):
    """LLM TP = world size; vision tower TP = ``vision_tp`` (1: replicated). Same batch on all ranks."""
    model = _model()
    ref = copy.deepcopy(model)
    full = _global_batch(model, rows=2)
    mesh = init_device_mesh("cpu", (world_size,))
    apply_tp(model.llm, mesh)
    if vision_tp > 1:
        apply_tp(model.encoders["vision"].encoder, mesh)
    return _run(model, ref, full, full, all_reduce_loss=False)


def tp_dp_worker(rank, world_size):
    """2-D mesh: FSDP over 'dp' (2) × TP over 'tp' (2) for the LLM and the vision tower."""
    model = _model()
    ref = copy.deepcopy(model)
    model.run_idle_encoders = True
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    dp = rank // 2
    full = _global_batch(model, rows=4)
    local = full.select_rows([2 * dp, 2 * dp + 1])
    apply_tp(model.llm, mesh["tp"])
    apply_tp(model.encoders["vision"].encoder, mesh["tp"])
    apply_fsdp(model, mesh["dp"])

    def step():  # the loss summed over DP replicas; TP peers hold the same partial sum
        count = int((full.labels[:, 1:] != -100).sum())
        loss = model(local, num_items_in_batch=count).loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total, group=mesh["dp"].get_group())
        return total

    def ref_step():
        loss = ref(full, num_items_in_batch=int((full.labels[:, 1:] != -100).sum())).loss
        loss.backward()
        return loss

    return compare_steps(step, ref_step, list(model.named_parameters()), ref)
