"""Workers for the gloo tests: each compares a parallelised model with a single-process reference."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

from amylum.models import BranchFreeze, FreezeSpec, apply_freeze, build_preset  # noqa: E402
from amylum.parallel.fsdp import apply_fsdp  # noqa: E402
from amylum.parallel.tensor import apply_tp  # noqa: E402
from model_batches import build_batch, random_inputs  # noqa: E402

TOL = 2e-5  # fp32 on CPU: only summation order differs between sharded and reference runs


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


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _compare_steps(model, ref, local_batch, full_batch, steps=3):
    count = int((full_batch.labels[:, 1:] != -100).sum())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-3)
    worst = 0.0
    for _ in range(steps):
        ref_loss = ref(full_batch, num_items_in_batch=count).loss
        ref_loss.backward()
        loss = model(local_batch, num_items_in_batch=count).loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        worst = max(worst, abs(float(total) - float(ref_loss)))
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            if q.grad is None:
                assert p.grad is None, f"{name} got a gradient but the reference did not"
                continue
            diff = (_full(p.grad) - q.grad).abs().max().item()
            assert diff < TOL, f"{name}: gradient differs by {diff}"
            worst = max(worst, diff)
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    return worst


def fsdp_worker(rank, world_size):
    """FSDP2 over all ranks; each rank trains on its own rows; text-only rows land on some ranks."""
    model = _model()
    ref = copy.deepcopy(model)
    model.run_idle_encoders = True
    full = _global_batch(model, rows=2 * world_size)
    local = full.select_rows([rank * 2, rank * 2 + 1] if world_size < 4 else [rank * 2 + 1] if rank % 2 else [rank * 2])
    if world_size >= 4:  # with 4 ranks and 8 rows use every row: rank r takes rows 2r and 2r + 1
        local = full.select_rows([2 * rank, 2 * rank + 1])
    mesh = init_device_mesh("cpu", (world_size,))
    apply_fsdp(model, mesh)
    return _compare_steps(model, ref, local, full)


def fsdp_text_only_rank_worker(rank, world_size):
    """Rank 1 sees only text: without idle-encoder runs its collectives would fall out of step."""
    model = _model()
    ref = copy.deepcopy(model)
    model.run_idle_encoders = True
    full = _global_batch(model, rows=4)
    local = full.select_rows([0, 2] if rank == 0 else [1, 3])
    apply_fsdp(model, init_device_mesh("cpu", (world_size,)))
    return _compare_steps(model, ref, local, full)


def tp_worker(rank, world_size, vision_tp):
    """LLM TP = world size; vision tower TP = ``vision_tp`` (1: replicated). Same batch on all ranks."""
    model = _model()
    ref = copy.deepcopy(model)
    full = _global_batch(model, rows=2)
    mesh = init_device_mesh("cpu", (world_size,))
    apply_tp(model.llm, mesh)
    if vision_tp > 1:
        apply_tp(model.encoders["vision"].encoder, mesh)
    # Every rank computes the full loss; the sum over ranks is world_size × the reference.
    count = int((full.labels[:, 1:] != -100).sum()) * world_size
    del count
    return _compare_tp(model, ref, full)


def _compare_tp(model, ref, batch, steps=3):
    count = int((batch.labels[:, 1:] != -100).sum())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-3)
    worst = 0.0
    for _ in range(steps):
        ref_loss = ref(batch, num_items_in_batch=count).loss
        ref_loss.backward()
        loss = model(batch, num_items_in_batch=count).loss
        loss.backward()
        worst = max(worst, abs(float(loss) - float(ref_loss)))
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            if q.grad is None:
                continue
            diff = (_full(p.grad) - q.grad).abs().max().item()
            assert diff < TOL, f"{name}: gradient differs by {diff}"
            worst = max(worst, diff)
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    return worst


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
    count = int((full.labels[:, 1:] != -100).sum())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=1e-3)
    worst = 0.0
    for _ in range(3):
        ref_loss = ref(full, num_items_in_batch=count).loss
        ref_loss.backward()
        loss = model(local, num_items_in_batch=count).loss
        loss.backward()
        for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
            if q.grad is None:
                continue
            diff = (_full(p.grad) - q.grad).abs().max().item()
            assert diff < TOL, f"{name}: gradient differs by {diff}"
            worst = max(worst, diff)
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    return worst
