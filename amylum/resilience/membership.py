"""Who this process is in the elastic job, read from torchrun's environment.

Each node runs one torchrun agent (``--nnodes MIN:MAX --nproc-per-node 1 --rdzv-backend c10d``)
and the agent starts one worker. The agent's rendezvous decides membership; the worker learns it
from the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR/PORT, the restart count, the
run id). Node identity must outlive a rendezvous round (ranks do not), so it comes from
``AMYLUM_NODE_ID`` or the host name. Without torchrun's variables the worker runs alone: one
process, no peers (the failure-free reference run).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class Membership:
    node: str
    rank: int
    world_size: int
    master_addr: str | None
    master_port: int | None
    run_id: str
    restart_count: int

    @property
    def elastic(self) -> bool:
        return self.master_addr is not None

    @classmethod
    def from_environ(cls, env=None) -> "Membership":
        env = os.environ if env is None else env
        node = env.get("AMYLUM_NODE_ID") or socket.gethostname()
        if "TORCHELASTIC_RUN_ID" not in env:
            return cls(node, 0, 1, None, None, "local", 0)
        if env.get("LOCAL_WORLD_SIZE", "1") != "1":
            raise RuntimeError(f"the elastic runtime runs one worker per node (--nproc-per-node 1), got "
                               f"LOCAL_WORLD_SIZE={env['LOCAL_WORLD_SIZE']}")
        return cls(node, int(env["RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                   env["TORCHELASTIC_RUN_ID"], int(env.get("TORCHELASTIC_RESTART_COUNT", "0")))
