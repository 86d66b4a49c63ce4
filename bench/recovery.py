"""Recovery time of the elastic runtime on CPU: kill one of three simulated nodes mid-training.

Each node is a torchrun agent on localhost (``--nnodes 2:3``, c10d rendezvous, gloo, tiny-vlm,
one worker per node). Once the run is in steady state, node c's whole process tree is SIGKILLed;
recovery is the time from the kill to the first step completed by the re-formed group (re-plan,
state restored from host memory, the interrupted step redone). Two restart modes are measured in
the same run (the machine is shared, so only same-run figures compare):

- cold: torchrun restarts the worker, which pays Python's start-up and imports again;
- warm spare (the default launcher, ``amylum.resilience.launch``): the restart is handed to a
  process that imported everything beforehand.

Columns split the recovery: detect (kill → a survivor leaves the failed group), rendezvous
(→ torchrun starts the new worker: agent notices, stops, re-forms the round), start (→ the new
worker has joined the process group: imports when cold), restore (→ model built, state restored
from its own /dev/shm snapshot, re-planned), step (→ the redone step completes).

Run: python bench/recovery.py [--reps 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from amylum.resilience.events import read_events
from amylum.resilience.launch import spare_path
from amylum.resilience.local import LocalCluster, write_tiny_run
from amylum.runtime.distributed.launch import free_local_port as _port

TIMEOUT = 300


def _events(run_dir: Path) -> list[dict]:
    return read_events(run_dir) if (run_dir / "resilience").is_dir() else []


def scenario(warm: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix="amylum-recovery-"))
    config = write_tiny_run(root, steps=10000)
    run_dir = root / "run"
    port = _port()
    cluster = LocalCluster(config, [], run_id=f"bench-{port}", port=port, min_nodes=2, max_nodes=3,
                           log_dir=root / "logs", warm_spares=warm)
    deadline = time.time() + TIMEOUT
    try:
        for n in "abc":
            cluster.start(n)

        def ready() -> bool:
            steps = [e for e in _events(run_dir) if e["event"] == "step"]
            if not steps or max(e["step"] for e in steps) < 3:
                return False
            sockets = [spare_path({"TORCHELASTIC_RUN_ID": cluster.run_id, "AMYLUM_NODE_ID": n}) for n in "ab"]
            return not warm or all(os.path.exists(s) for s in sockets)

        while not ready():
            if time.time() > deadline:
                raise TimeoutError(f"no steady state; logs in {root / 'logs'}")
            time.sleep(0.1)
        time.sleep(1.0)  # let the spares settle into waiting
        killed = cluster.kill("c")
        while True:
            ev = _events(run_dir)
            new = [e for e in ev if e["event"] == "step" and e["t"] > killed and e["gen"] > 1]
            if new:
                break
            if time.time() > deadline:
                raise TimeoutError(f"no recovery; logs in {root / 'logs'}")
            time.sleep(0.1)
    finally:
        cluster.close()
    gen = new[0]["gen"]
    starts = [e for e in ev if e["event"] == "start" and e["gen"] == gen]
    lost = [e for e in ev if e["event"] == "peer_lost" and e["t"] > killed]
    row = {
        "detect": min(e["t"] for e in lost) - killed,
        "rendezvous": min(e["process_start"] for e in starts) - min(e["t"] for e in lost),
        "start": max(e["t_group"] for e in starts) - min(e["process_start"] for e in starts),
        "restore": max(e["t"] for e in starts) - max(e["t_group"] for e in starts),
        "step": min(e["t"] for e in new) - max(e["t"] for e in starts),
        "total": min(e["t"] for e in new) - killed,
        "sources": sorted({e["source"] for e in starts}),
    }
    shutil.rmtree(root, ignore_errors=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    cols = ("detect", "rendezvous", "start", "restore", "step", "total")
    print(f"cpu: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start, python {sys.version.split()[0]}")
    print("| restart | " + " | ".join(f"{c} (s)" for c in cols) + " | target ≤ 10 s |")
    print("|---|" + "---|" * (len(cols) + 1))
    for warm in (False, True):
        rows = [scenario(warm) for _ in range(args.reps)]
        assert all(r["sources"] == ["memory"] for r in rows), rows
        med = {c: statistics.median(r[c] for r in rows) for c in cols}
        name = "warm spare" if warm else "cold"
        print(f"| {name} | " + " | ".join(f"{med[c]:.1f}" for c in cols)
              + f" | {'yes' if med['total'] <= 10 else 'no'} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end (median of {args.reps} run(s) per row)")


if __name__ == "__main__":
    main()
