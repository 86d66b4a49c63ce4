"""Simulated nodes on one machine: one torchrun agent per "node", for tests, benchmarks and demos.

``LocalCluster`` hosts the rendezvous store itself (so any node, including the first, may be
killed: with torchrun's c10d backend the store otherwise lives in one agent, and losing that agent
loses the job; on a real cluster put the endpoint on a host that does not fail, or use etcd),
starts agents with ``--nnodes MIN:MAX --rdzv-backend c10d``, and kills or freezes a node's whole
process tree (agent and worker: torchrun starts workers in their own sessions, so a process-group
kill of the agent alone would leave its worker running).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

# Short rendezvous timers: a lost agent is dropped after keep_alive_interval × max_attempt, and a
# round closes last_call_timeout after MIN nodes joined. They bound recovery time on one machine.
# 2 s of keep-alive was too short on a loaded 2-core machine: a joining agent found every live
# agent's keep-alive stale, dropped them all and waited alone in a new round (seen here); 4 s holds.
RDZV_CONF = "is_host=0,last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=4,join_timeout=120"


def node_pids(cluster: str, node: str) -> list[int]:
    """Every process of ``node`` in ``cluster`` (agent, launcher, worker, spares), found by the
    environment they inherit: a warm spare is not a descendant of the agent (it outlives worker
    restarts), but a machine dying takes it too."""
    want = {f"AMYLUM_NODE_ID={node}".encode(), f"AMYLUM_LOCAL_CLUSTER={cluster}".encode()}
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                env = set(Path(f"/proc/{d}/environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if want <= env:
                out.append(int(d))
    return out


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, i = [pid], 0
    while i < len(out):
        out += children.get(out[i], [])
        i += 1
    return out


TINY_RUN = """
[job]
run_dir = "{run_dir}"
seed = 0
threads = 1

[model]
preset = "tiny-vlm"

[data]
demo = "vlm"
n_train = 96
n_eval = 0
max_length = 128

[training]
steps = {steps}
batch_size = 4
lr = 0.005
warmup_steps = 2

[checkpoint]
every = {checkpoint_every}
keep_last = 2

[resilience]
f = 1
global_microbatches = 6
max_nodes = 3
snapshot_root = "{shm}"
heartbeat_timeout_s = 4.0
"""


def write_tiny_run(root: Path, *, steps: int, checkpoint_every: int = 0) -> Path:
    """``root/run.toml``: the tiny elastic run of the CPU tests and ``bench/recovery.py`` (tiny-vlm,
    f = 1, 6 global microbatches of 4, up to 3 nodes, snapshots under ``root/shm``)."""
    path = Path(root) / "run.toml"
    path.write_text(TINY_RUN.format(run_dir=Path(root) / "run", shm=Path(root) / "shm", steps=steps,
                                    checkpoint_every=checkpoint_every))
    return path


class LocalCluster:
    def __init__(self, config: str | Path, overrides: list[str], *, run_id: str, port: int, min_nodes: int,
                 max_nodes: int, max_restarts: int = 10, log_dir: str | Path, rdzv_conf: str = RDZV_CONF,
                 warm_spares: bool = True) -> None:
        # warm_spares: run the launcher that hands restarts to a pre-imported spare (launch.py);
        # False runs the worker directly, every restart paying Python's start-up and imports
        self.entry = "amylum.resilience.launch" if warm_spares else "amylum.resilience"
        self.config, self.overrides = str(config), list(overrides)
        self.run_id, self.port = run_id, port
        self.min_nodes, self.max_nodes, self.max_restarts = min_nodes, max_nodes, max_restarts
        self.rdzv_conf = rdzv_conf
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=60))
        self.agents: dict[str, subprocess.Popen] = {}

    def start(self, node: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={self.min_nodes}:{self.max_nodes}",
               "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-id={self.run_id}",
               f"--rdzv-endpoint=127.0.0.1:{self.port}", f"--rdzv-conf={self.rdzv_conf}",
               f"--max-restarts={self.max_restarts}", "--monitor-interval=0.1",
               "-m", self.entry, self.config, *self.overrides]
        env = dict(os.environ, AMYLUM_NODE_ID=node, AMYLUM_LOCAL_CLUSTER=self.run_id, OMP_NUM_THREADS="1",
                   PYTHONUNBUFFERED="1",
                   TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")  # a fresh worker store per round (worker.py)
        log = open(self.log_dir / f"agent-{node}.log", "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.agents[node] = proc
        return proc

    def signal(self, node: str, sig: int) -> list[int]:
        """Send ``sig`` to every process of the node (agent, workers, spares); returns the pids."""
        pids = sorted(set(_descendants(self.agents[node].pid)) | set(node_pids(self.run_id, node)))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill(self, node: str) -> float:
        """SIGKILL the node's whole process tree (a machine dying); returns the kill time."""
        t = time.time()
        self.signal(node, signal.SIGKILL)
        self.agents[node].wait(timeout=10)
        return t

    def wait(self, nodes: list[str], timeout: float) -> dict[str, int]:
        """Exit codes of ``nodes``' agents; raises TimeoutError (after killing everything) on a hang."""
        deadline = time.time() + timeout
        codes = {}
        for n in nodes:
            left = deadline - time.time()
            try:
                codes[n] = self.agents[n].wait(timeout=max(0.1, left))
            except subprocess.TimeoutExpired:
                self.close()
                raise TimeoutError(f"node {n} did not finish within {timeout:.0f} s; logs in {self.log_dir}") from None
        return codes

    def log(self, node: str) -> str:
        return (self.log_dir / f"agent-{node}.log").read_text(errors="replace")

    def close(self) -> None:
        """Kill whatever is left of every node (spares of finished nodes included)."""
        for node, proc in self.agents.items():
            self.signal(node, signal.SIGCONT)
            self.signal(node, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # spares of killed nodes could not remove their socket and lock files
        from amylum.resilience.launch import spare_path

        for node in self.agents:
            path = spare_path({"TORCHELASTIC_RUN_ID": self.run_id, "AMYLUM_NODE_ID": node})
            for leftover in (path, path + ".lock"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
