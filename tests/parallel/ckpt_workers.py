"""Distributed checkpoint workers: save under FSDP on N ranks, resume on a different number of ranks."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from amylum.parallel.fsdp import apply_fsdp  # noqa: E402
from amylum.runtime.checkpoint import CheckpointManager  # noqa: E402
from dist_workers import _global_batch, _model  # noqa: E402


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def _sharded_model(world_size):
    model = _model()
    model.run_idle_encoders = True
    apply_fsdp(model, init_device_mesh("cpu", (world_size,)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return model, opt


def _train(model, opt, rank, world_size, steps):
    full = _global_batch(model, rows=4)
    per = 4 // world_size
    local = full.select_rows(list(range(rank * per, (rank + 1) * per)))
    count = int((full.labels[:, 1:] != -100).sum())
    losses = []
    for _ in range(steps):
        loss = model(local, num_items_in_batch=count).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(float(total))
    return losses


def _snapshot(model, opt):
    params = {n: _full(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}
    state = {}
    for p, s in opt.state.items():
        name = next(n for n, q in model.named_parameters() if q is p)
        state[name] = {k: _full(v).clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
    return params, state


def save_worker(rank, world_size, root):
    model, opt = _sharded_model(world_size)
    _train(model, opt, rank, world_size, steps=2)
    CheckpointManager(root).save(2, model, opt, {"cursor": 2})
    params, state = _snapshot(model, opt)
    if rank == 0:
        torch.save({"params": params, "state": state}, Path(root) / "expected.pt")
    after = _train(model, opt, rank, world_size, steps=2)
    return after


def resume_worker(rank, world_size, root):
    model, opt = _sharded_model(world_size)
    info = CheckpointManager(root).latest()
    extra = CheckpointManager.load(info.path, model, opt)
    expected = torch.load(Path(root) / "expected.pt", weights_only=True)
    params, state = _snapshot(model, opt)
    for n, v in expected["params"].items():
        assert torch.equal(params[n], v), f"parameter {n} differs after resharded resume"
    for n, s in expected["state"].items():
        for k, v in s.items():
            assert torch.equal(state[n][k], v), f"optimizer state {n}.{k} differs after resharded resume"
    return {"extra": extra.get("cursor"), "losses": _train(model, opt, rank, world_size, steps=2)}
