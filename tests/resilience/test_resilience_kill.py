"""Three simulated nodes train; a new node joins (it receives every layer's parameters and
optimizer state from the others at the re-plan); then one node is killed: the survivors re-plan,
restore from host memory and finish. The loss trajectory, the consumed samples and the optimizer
state match a run without the failure. Each node is its own torchrun agent on localhost (gloo,
tiny-vlm). The join comes first because a node that arrives after the others finished would wait
for a rendezvous that never comes (torchrun's behaviour, not a test artefact)."""

from __future__ import annotations

import math
import shutil
import time

from amylum.resilience.events import read_events
from amylum.resilience.local import LocalCluster

from resilience_scenario import committed_steps, free_port, reference_losses, wait_for_step, write_config

STEPS = 40  # the join (an agent start: 5-40 s on a loaded machine) and the kill happen while training runs
JOIN_AFTER = 2  # node d starts once the group has completed this step
TIMEOUT = 240  # whole scenario (pytest-timeout is 300 s): fail fast on a hang


def test_kill_one_node_training_continues_exactly(tmp_path):
    config = write_config(tmp_path, STEPS)
    reference = reference_losses(tmp_path, config)
    assert sorted(reference) == list(range(1, STEPS + 1))

    run_dir = tmp_path / "run"
    port = free_port()
    cluster = LocalCluster(config, ["--resilience.max_nodes=4"], run_id=f"kill-{port}", port=port, min_nodes=2, max_nodes=4,
                           log_dir=tmp_path / "logs")
    deadline = time.time() + TIMEOUT
    try:
        for node in ("a", "b", "c"):
            cluster.start(node)
        wait_for_step(run_dir, "c", JOIN_AFTER, deadline)
        cluster.start("d")  # a new machine: joins at the next re-plan
        wait_for_step(run_dir, "d", 1, deadline)
        killed_at = cluster.kill("c")
        shutil.rmtree(tmp_path / "shm" / cluster.run_id / "c")  # the lost machine's memory is gone
        codes = cluster.wait(["a", "b", "d"], timeout=max(1.0, deadline - time.time()))
    finally:
        cluster.close()
    assert codes == {"a": 0, "b": 0, "d": 0}, cluster.log("a")[-3000:]

    events = read_events(run_dir)
    starts = [e for e in events if e["event"] == "start"]
    # the new node joined at a re-plan and got every layer from the others (it had no snapshot)
    joined = [e for e in starts if e["node"] == "d"][0]
    assert joined["joined"] == ["d"] and joined["source"] == "memory"
    assert sum(t[2] for t in joined["transfers"] if t[1] == "d") == len(joined["digests"])
    assert joined["mix"] == {"1": 4}  # four one-node pipelines
    after = [e for e in starts if e["t"] > killed_at]
    first_gen = min(e["gen"] for e in after)
    recovered = [e for e in after if e["gen"] == first_gen]
    for e in recovered:  # re-planned from the templates: 3 one-node pipelines (>= f+1), from memory
        assert e["nodes"] == ["a", "b", "d"] and e["lost"] == ["c"] and e["mix"] == {"1": 3}
        assert e["source"] == "memory" and all("c" not in t[:2] for t in e["transfers"])
    assert all(e["gen"] == first_gen for e in after)  # one recovery, no restart loop

    # loss trajectory: equal to the failure-free run up to float summation order
    steps = committed_steps(events)
    assert sorted(steps) == list(range(1, STEPS + 1))
    for s, attempt in steps.items():
        records = attempt["records"]
        losses = {r["loss"] for r in records}
        assert len(losses) == 1  # every replica reports the same all-reduced loss
        assert math.isclose(losses.pop(), reference[s], rel_tol=1e-4, abs_tol=1e-5), (s, records[0]["loss"], reference[s])

    # sample accounting: every step consumed exactly its global batch, each sample once
    consumed = []
    for s in sorted(steps):
        mine = steps[s]["samples"]
        assert sorted(mine) == list(range((s - 1) * 24, s * 24)), s
        consumed += mine
    assert len(consumed) == len(set(consumed)) == STEPS * 24

    # parameters + optimizer state after every restore == the state that step had before the
    # restart, bit for bit, on every node (survivors' own snapshots, the newcomer's transferred
    # copy). A step may have been completed by more than one attempt (one interrupted by a
    # restart, then redone by a group of another size: other float summation order, other bits),
    # so the restored state must equal one of the earlier attempts' states of that step.
    for e in [joined] + recovered:
        attempts = {}
        for x in events:
            if x["event"] == "step" and x["step"] == e["step"] and x["t"] < e["t"]:
                attempts.setdefault((x["gen"], x["lineage"]), x["digests"])
        assert attempts, f"step {e['step']} was completed before the restart"
        assert e["digests"] in attempts.values(), e["node"]

    # recovery: from the kill to the first step the re-formed group completes
    new_gen = first_gen
    recovery = min(e["t"] for e in events if e["event"] == "step" and e["gen"] == new_gen) - killed_at
    print(f"\nrecovery (kill -> first step completed by the re-formed group): {recovery:.1f} s")
    assert recovery < 60
