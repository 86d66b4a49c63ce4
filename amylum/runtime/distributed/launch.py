"""What torchrun told this process (rank, world size, local rank), and the process group.

torchrun (and ``srun torchrun`` on Slurm) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; amylum reads them and never invents
its own rendezvous. The process group gets a short timeout, so a rank that hangs (a missing
message, a crashed peer) fails the job with an error instead of blocking it for torch's default
ten minutes.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


def free_local_port() -> int:
    """A TCP port free on this host now, for a single-host rendezvous (tests, local benchmarks).

    The OS picks it; another process may take it before the rendezvous binds it, which on a
    test machine is rare enough that a retry is not worth its complexity."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @staticmethod
    def from_environ(environ: dict[str, str] | None = None) -> "LaunchEnv":
        env = os.environ if environ is None else environ
        try:
            world = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        except ValueError as e:
            raise ValueError(f"torchrun's environment variables are not integers: {e}") from e
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return LaunchEnv(rank, world, local_rank, local_world)


def under_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when this process is one of several started by torchrun (or a compatible launcher)."""
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env or int(env.get("WORLD_SIZE", "1")) > 1


def rank_device(want: str, local_rank: int) -> torch.device:
    """``job.device`` for this rank: "auto"/"cuda" take the GPU of the local rank."""
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"job.device = {want!r} but no CUDA device is available (torch {torch.__version__})")
    if want.startswith("cuda:"):
        return torch.device(want)
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}")
    return torch.device("cuda", local_rank)


def init_process_group(env: LaunchEnv, device: torch.device, timeout_s: float) -> None:
    """NCCL on GPUs, gloo on CPU; reuses a group that already exists (tests, notebooks)."""
    if dist.is_initialized():
        if dist.get_world_size() != env.world_size:
            raise RuntimeError(f"a process group of {dist.get_world_size()} ranks exists; this run needs {env.world_size}")
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # One process started without torchrun (`amylum train --plan PLAN`): no rendezvous to read.
    store = dist.HashStore() if env.world_size == 1 and "MASTER_ADDR" not in os.environ else None
    dist.init_process_group(
        backend, rank=env.rank, world_size=env.world_size, timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None, store=store,
    )
