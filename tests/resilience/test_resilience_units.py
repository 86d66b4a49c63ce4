"""Pure parts of the elastic runtime: re-planning, resume point, transfer routes, sample accounting."""

from __future__ import annotations

import pytest
import torch

from amylum.planner.templates import LayerCost
from amylum.resilience.plan import TooFewNodesError, instance_from_json, instance_to_json, plan_for, runtime_templates, slots
from amylum.resilience.recovery import NodeReport, SnapshotInfo, choose_resume, holder_sets, route_transfers
from amylum.resilience.sampling import GlobalOrder

LAYERS = [LayerCost(f"l{i}", fwd_s=1e-3, bwd_s=2e-3, param_bytes=4e6, grad_bytes=4e6, optim_bytes=8e6,
                    out_bytes=1e3) for i in range(6)]


def _cover(inst, B):
    """(first, count) per pipeline in order, checking they tile [0, B)."""
    s = slots(inst)
    ranges = sorted({(v.first_microbatch, v.microbatches) for v in s.values()})
    pos = 0
    for first, count in ranges:
        assert first == pos and count >= 1
        pos += count
    assert pos == B
    return ranges


def test_replan_keeps_global_batch_and_f_plus_one_pipelines():
    ts = runtime_templates(LAYERS, max_nodes=4, f=1, global_microbatches=7)
    inst, lost, joined = plan_for(ts, ["a", "b", "c", "d"], 1, 7)
    assert len(inst.pipelines) == 4 and joined == ("a", "b", "c", "d")
    _cover(inst, 7)
    again, lost, joined = plan_for(ts, ["a", "b", "d"], 1, 7, instance_from_json(instance_to_json(inst)))
    assert lost == ("c",) and joined == ()
    assert sorted(again.node_ids) == ["a", "b", "d"] and again.global_microbatches == 7
    _cover(again, 7)
    back, lost, joined = plan_for(ts, ["a", "b", "d", "e"], 1, 7, again)
    assert joined == ("e",) and lost == ()
    _cover(back, 7)


def test_too_few_nodes_for_f_plus_one_replicas_is_a_clear_error():
    ts = runtime_templates(LAYERS, max_nodes=3, f=1, global_microbatches=4)
    inst, _, _ = plan_for(ts, ["a", "b", "c"], 1, 4)
    with pytest.raises(TooFewNodesError, match=r"f=1 needs at least \(f\+1\)·n0 = 2"):
        plan_for(ts, ["a"], 1, 4, inst)


def test_model_too_big_for_one_node_is_refused():
    from amylum.planner.templates import NodeSpec

    tiny_node = NodeSpec(gpus_per_node=1, gpu_memory_bytes=5e7, intra_bw=1e10, inter_bw=1e9)
    with pytest.raises(ValueError, match="one-node pipelines only"):
        runtime_templates(LAYERS, max_nodes=6, f=1, global_microbatches=4, node=tiny_node)


def _snap(lineage, step, units):
    return SnapshotInfo(lineage, step, frozenset(units))


def test_resume_point_is_latest_step_every_unit_survives_at():
    units = ["u0", "u1", "u2"]
    reports = [
        NodeReport("a", 0, (_snap("L", 4, units), _snap("L", 5, units))),  # committed step 5 before the failure
        NodeReport("b", 1, (_snap("L", 3, units), _snap("L", 4, units))),  # had not: the group resumes at 4
        NodeReport("d", 2, ()),  # joined: holds nothing
    ]
    # step 5 is held only by a: still complete, a alone is a full replica
    point = choose_resume(reports, units)
    assert (point.lineage, point.step) == ("L", 5) and point.holders["u0"] == [0]
    # pipelines holding parts: step 5 is incomplete (u2 missing), step 4 is complete on both
    reports[0] = NodeReport("a", 0, (_snap("L", 4, units), _snap("L", 5, ["u0", "u1"])))
    point = choose_resume(reports, units)
    assert point.step == 4 and point.holders["u2"] == [0, 1]
    # another lineage (a run restarted from disk) never mixes with this one
    assert choose_resume([NodeReport("a", 0, (_snap("X", 9, ["u0"]),)),
                          NodeReport("b", 1, (_snap("Y", 9, ["u1", "u2"]),))], units) is None
    assert choose_resume([NodeReport("d", 0, ())], units) is None


def test_transfer_routes_send_only_missing_units_and_spread_senders():
    holders = {"u0": [0, 1], "u1": [0, 1], "u2": [1], "u3": [0, 1]}
    need = {0: {"u0", "u1", "u2", "u3"}, 1: {"u0", "u1", "u2", "u3"}, 2: {"u0", "u1", "u2", "u3"}}
    routes = route_transfers(holders, need)
    got = {(src, dst, u) for (src, dst), us in routes.items() for u in us}
    # rank 0 lacks u2 (only rank 1 has it); rank 2 lacks everything; nobody receives what it holds
    assert (1, 0, "u2") in got
    assert {u for (_, dst, u) in got if dst == 2} == {"u0", "u1", "u2", "u3"}
    assert all(dst not in holders[u] for (_, dst, u) in got)
    senders = [src for (src, dst, u) in got if dst == 2]
    assert set(senders) == {0, 1}  # the load is spread over both holders
    with pytest.raises(ValueError, match="no holder"):
        route_transfers({"u0": []}, {0: {"u0"}})


def test_holder_sets_group_layers_by_replica_set():
    # pipeline P0 = ranks 0,1 cut after u1; pipeline P1 = rank 2 holds all: boundaries differ
    need = {0: {"u0", "u1"}, 1: {"u2", "u3"}, 2: {"u0", "u1", "u2", "u3"}}
    sets = holder_sets(need)
    assert sets == {frozenset({0, 2}): ["u0", "u1"], frozenset({1, 2}): ["u2", "u3"]}


def test_global_batch_positions_are_a_function_of_the_step_only():
    n, m, B = 10, 2, 3  # 6 samples per step: the second step straddles an epoch boundary
    order = GlobalOrder(lambda epoch: torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy(),
                        n, m, B)
    seen = []
    for step in range(5):
        for split in ([3], [1, 2], [1, 1, 1]):  # any plan's split covers the step exactly once
            first, got = 0, []
            for count in split:
                got += [s.position for mb in order.microbatches(step, first, count) for s in mb]
                first += count
            assert got == list(order.step_positions(step))
        seen += list(order.step_positions(step))
    assert seen == list(range(30))
    # each epoch uses every dataset index once
    epoch1 = [order.sample(p).index for p in range(10, 20)]
    assert sorted(epoch1) == list(range(10))
    with pytest.raises(ValueError, match="outside the global batch"):
        order.microbatches(0, 2, 2)
