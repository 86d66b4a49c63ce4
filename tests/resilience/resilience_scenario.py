"""Shared by the distributed resilience tests: a tiny elastic run on localhost and its event log."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from amylum.resilience.events import read_events
from amylum.resilience.local import write_tiny_run
from amylum.runtime.distributed.launch import free_local_port as free_port  # noqa: F401  (the tests' import)


def write_config(root: Path, steps: int) -> Path:
    return write_tiny_run(root, steps=steps, checkpoint_every=4)


def reference_losses(root: Path, config: Path, timeout: float = 180) -> dict[int, float]:
    """The failure-free run: one process, the whole global batch, no torchrun."""
    run_dir = root / "reference"
    subprocess.run([sys.executable, "-m", "amylum.resilience", str(config), f"--job.run_dir={run_dir}",
                    f"--resilience.snapshot_root={root / 'shm-reference'}", "--resilience.f=0"],
                   check=True, timeout=timeout, capture_output=True, env={"OMP_NUM_THREADS": "1", **_env()})
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["event"] == "step"}


def _env() -> dict:
    import os

    return dict(os.environ)


def wait_for_step(run_dir: Path, node: str, step: int, deadline: float) -> None:
    while time.time() < deadline:
        if (run_dir / "resilience").is_dir() and any(
                e["event"] == "step" and e["node"] == node and e["step"] >= step for e in read_events(run_dir)):
            return
        time.sleep(0.1)
    raise TimeoutError(f"node {node} did not reach step {step} in time")


def committed_steps(events: list[dict]) -> dict[int, dict]:
    """step → the last attempt that completed it: {"records": its step records, "samples": the
    positions its nodes consumed}. An attempt is one group (generation, lineage); a step redone
    after a restart supersedes an earlier attempt. Samples come from the "consume" records a node
    writes before the step's first collective, so a node that died after contributing to a
    completed step (before logging it) is still counted."""
    attempts: dict[int, dict[tuple, dict]] = {}
    for e in events:
        if e["event"] in ("step", "consume"):
            a = attempts.setdefault(e["step"], {}).setdefault((e["gen"], e["lineage"]),
                                                               {"records": [], "samples": [], "t": 0.0})
            if e["event"] == "step":
                a["records"].append(e)
                a["t"] = max(a["t"], e["t"])
            else:
                a["samples"] += e["samples"]
    return {s: max((a for a in per.values() if a["records"]), key=lambda a: a["t"])
            for s, per in attempts.items() if any(a["records"] for a in per.values())}
