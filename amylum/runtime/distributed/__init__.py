"""Training under torchrun: a planner plan executed over many processes (docs/parallel.md)."""

from amylum.runtime.distributed.launch import LaunchEnv, under_torchrun
from amylum.runtime.distributed.run import train_distributed

__all__ = ["LaunchEnv", "train_distributed", "under_torchrun"]
