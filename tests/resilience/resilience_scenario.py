"""Shared by the distributed resilience tests: a tiny elastic run on localhost and its event log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from amylum.resilience.events import read_events
from amylum.resilience.local import write_tiny_run
from amylum.runtime.distributed.launch import free_local_port as free_port  # noqa: F401  (the tests' import)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "parallel"))

from dist_harness import forkserver  # noqa: E402


def write_config(root: Path, steps: int) -> Path:
    return write_tiny_run(root, steps=steps, checkpoint_every=4)


def reference_losses(root: Path, config: Path, timeout: float = 180) -> dict[int, float]:
    """The failure-free run: one process, the whole global batch, no torchrun."""
    run_dir = root / "reference"
    run_worker([str(config), f"--job.run_dir={run_dir}", f"--resilience.snapshot_root={root / 'shm-reference'}",
                "--resilience.f=0"], {"OMP_NUM_THREADS": "1", **os.environ}, root / "reference-log",
               timeout=timeout).check_returncode()
    return {e["step"]: e["loss"] for e in read_events(run_dir) if e["event"] == "step"}


def _worker_entry(argv: list[str], environ: dict, out: str, err: str) -> None:
    import runpy

    for fd, path in ((1, out), (2, err)):  # what a subprocess's captured stdout and stderr would hold
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.environ.clear()
    os.environ.update(environ)
    sys.argv = ["amylum.resilience", *argv]
    runpy.run_module("amylum.resilience", run_name="__main__", alter_sys=True)  # exits with the worker's status


def run_worker(argv: list[str], environ: dict, log_dir: Path, timeout: float) -> subprocess.CompletedProcess:
    """``python -m amylum.resilience ARGV`` (the elastic worker alone, no torchrun) in a process forked
    from the tests' forkserver (tests/parallel/dist_harness.py), which imported torch and amylum
    once: a new interpreter would spend about 10 s of CPU on those imports. The worker runs as
    under ``python -m``, its exit status (``os._exit`` included) and its output are a subprocess's."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    out, err = log_dir / "stdout", log_dir / "stderr"
    proc = forkserver().Process(target=_worker_entry, args=(list(argv), dict(environ), str(out), str(err)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired(["amylum.resilience", *argv], timeout, err.read_text())
    return subprocess.CompletedProcess(["amylum.resilience", *argv], proc.exitcode, out.read_text(), err.read_text())


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
