"""What evaluation needs from the process group: shard items, agree on stops, gather results.

Under a sharded model (FSDP, TP) every rank must run the same number of forwards, so ranks
agree (all-reduce) on how many batches to run and when generation may stop; results are
gathered to every rank so each holds the same scores. Without a process group all of this is
the identity, and single-device evaluation never touches ``torch.distributed``.
"""

from __future__ import annotations

from typing import Any

import torch


class LocalComm:
    """One process: no communication."""

    rank, world_size = 0, 1

    def max_int(self, value: int) -> int:
        return value

    def all_true(self, flag: bool) -> bool:
        return flag

    def gather(self, items: list[Any]) -> list[Any]:
        return list(items)


class TorchComm:
    """The default process group. ``device``: where the reduction tensors live (cuda for NCCL)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("TorchComm needs an initialised torch.distributed process group")
        self._dist = dist
        self.device = torch.device(device)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def max_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long, device=self.device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX)
        return int(t.item())

    def all_true(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], dtype=torch.long, device=self.device)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, items: list[Any]) -> list[Any]:
        parts: list[list[Any] | None] = [None] * self.world_size
        self._dist.all_gather_object(parts, items)
        return [x for part in parts for x in (part or [])]


def default_comm(device: torch.device | str = "cpu") -> LocalComm | TorchComm:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchComm(device)
    return LocalComm()
