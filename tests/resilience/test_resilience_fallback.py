"""Beyond what host memory can restore: too few nodes (clear message, exit code) and no surviving
snapshot (resume from the last disk checkpoint, redoing the steps after it). Single-process runs
of the elastic worker, so these paths are tested without torchrun's start-up cost (and forked from
the tests' forkserver, without Python's imports: resilience_scenario.run_worker)."""

from __future__ import annotations

import math
import os
import shutil

from amylum.resilience.events import read_events
from amylum.resilience.worker import EXIT_TOO_FEW_NODES

from resilience_scenario import committed_steps, run_worker, write_config


def _run(config, run_dir, shm, *extra, node="n1"):
    env = dict(os.environ, OMP_NUM_THREADS="1", AMYLUM_NODE_ID=node)
    return run_worker([str(config), f"--job.run_dir={run_dir}", f"--resilience.snapshot_root={shm}", *extra], env,
                      f"{run_dir}-{node}-log", timeout=180)


def test_too_few_nodes_for_f_exits_with_a_clear_message(tmp_path):
    config = write_config(tmp_path, steps=2)
    out = _run(config, tmp_path / "run", tmp_path / "shm")  # f = 1 needs 2 nodes; this is one
    assert out.returncode == EXIT_TOO_FEW_NODES, out.stderr[-2000:]
    assert "f=1 needs at least (f+1)·n0 = 2" in out.stderr and "Add nodes" in out.stderr


def test_lost_snapshots_resume_from_last_disk_checkpoint(tmp_path):
    config = write_config(tmp_path, steps=6)  # disk checkpoint every 4 steps
    ref = _run(config, tmp_path / "ref", tmp_path / "shm-ref", "--resilience.f=0")
    assert ref.returncode == 0, ref.stderr[-2000:]
    reference = {e["step"]: e["loss"] for e in read_events(tmp_path / "ref") if e["event"] == "step"}

    run_dir, shm = tmp_path / "run", tmp_path / "shm"
    first = _run(config, run_dir, shm, "--resilience.f=0", "--resilience.stop_after=5")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(shm)  # the machine and its memory are gone; a new one takes over
    second = _run(config, run_dir, shm, "--resilience.f=0", node="n2")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from the last disk checkpoint" in second.stderr and "(step 4)" in second.stderr

    events = read_events(run_dir)
    start = [e for e in events if e["event"] == "start" and e["node"] == "n2"][0]
    assert start["source"] == "disk" and start["step"] == 4
    steps = committed_steps(events)
    assert sorted(steps) == list(range(1, 7))
    for s, attempt in steps.items():  # step 5 was done twice: the redo (on n2) is what counts
        records = attempt["records"]
        assert [r["node"] for r in records] == (["n2"] if s > 4 else ["n1"])
        assert sorted(attempt["samples"]) == list(range((s - 1) * 24, s * 24))
        assert math.isclose(records[0]["loss"], reference[s], rel_tol=1e-6), s
