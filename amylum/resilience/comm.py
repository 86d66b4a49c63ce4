"""Collectives of the elastic runtime: per-layer gradient sync and layer-state transfer.

Gradient sync: each set of ranks that holds the same layers (``recovery.holder_sets``) has its
own process group and all-reduces those layers' gradients as one flat buffer (sum: the loss is
already divided by the step's global target count, so the sum is the global mean gradient).
With one-node pipelines every rank holds every layer and there is one group, the whole world.

State transfer: point-to-point, one message per (source, destination) pair carrying every layer
the destination lacks: a JSON header (names, dtypes, shapes) and the raw bytes. No pickle crosses
the wire. Pairs are served in one global order, which every rank follows, so no cycle of blocking
sends can form.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

_DTYPES = {str(d): d for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
                                torch.int32, torch.uint8, torch.bool)}


class GradSync:
    """All-reduce (sum) each holder set's gradients in its group; ``groups``: [(group, params)]."""

    def __init__(self, groups: list[tuple[dist.ProcessGroup | None, list[torch.nn.Parameter]]]):
        self.groups = groups

    def __call__(self) -> None:
        for group, params in self.groups:
            grads = []
            for p in params:
                if p.grad is None:  # not used by this rank's microbatches (e.g. no image in them)
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            flat = _flatten_dense_tensors(grads)
            dist.all_reduce(flat, group=group)
            for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
                g.copy_(synced)


def send_state(state: dict[str, torch.Tensor], dst: int) -> int:
    """Send ``state`` to rank ``dst``; returns the payload bytes."""
    keys = sorted(state)
    tensors = [state[k].detach().cpu().contiguous() for k in keys]
    header = json.dumps([[k, str(t.dtype), list(t.shape)] for k, t in zip(keys, tensors)]).encode()
    payload = torch.cat([t.reshape(-1).view(torch.uint8) for t in tensors]) if tensors else torch.zeros(0, dtype=torch.uint8)
    dist.send(torch.tensor([len(header), payload.numel()], dtype=torch.int64), dst)
    dist.send(torch.frombuffer(bytearray(header), dtype=torch.uint8), dst)
    if payload.numel():
        dist.send(payload, dst)
    return payload.numel()


def recv_state(src: int) -> dict[str, torch.Tensor]:
    sizes = torch.zeros(2, dtype=torch.int64)
    dist.recv(sizes, src)
    header = torch.empty(int(sizes[0]), dtype=torch.uint8)
    dist.recv(header, src)
    payload = torch.empty(int(sizes[1]), dtype=torch.uint8)
    if payload.numel():
        dist.recv(payload, src)
    out, offset = {}, 0
    for key, dtype, shape in json.loads(bytes(header.tolist()).decode()):
        if dtype not in _DTYPES:
            raise ValueError(f"peer sent {key} as unsupported dtype {dtype}")
        d = _DTYPES[dtype]
        n = torch.Size(shape).numel() * torch.empty(0, dtype=d).element_size()
        out[key] = payload[offset:offset + n].view(d).reshape(shape).clone()
        offset += n
    if offset != payload.numel():
        raise ValueError(f"state from rank {src}: header describes {offset} bytes, payload has {payload.numel()}")
    return out


def all_gather_json(obj) -> list:
    """Every rank's JSON-able ``obj``, in rank order (bytes over gloo; nothing is unpickled)."""
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([data.numel()], dtype=torch.int64))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[:data.numel()] = data
    bufs = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world)]
    dist.all_gather(bufs, padded)
    return [json.loads(bytes(b[:int(s.item())].tolist()).decode()) for b, s in zip(bufs, sizes)]
