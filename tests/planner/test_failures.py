"""Failure-trace simulation: hand-checked accounting for both systems, and amylum's recovery path."""

import math

import pytest

from amylum.planner.failures import (Trace, best_checkpoint_interval, simulate_amylum,
                                     simulate_checkpoint_restart, synthetic_trace)
from amylum.planner.instantiate import instantiate
from amylum.planner.templates import LayerCost, NodeSpec, pipeline_templates


def test_synthetic_trace_matches_reference_shape():
    tr = synthetic_trace(600, start=30, removals=15, seed=0)
    assert len(tr.start_nodes) == 30 and len(tr.events) == 15
    assert [e[0] for e in tr.events] == [600 * i for i in range(1, 16)]
    assert len({e[2] for e in tr.events}) == 15 and tr.horizon_s == 16 * 600
    assert tr == synthetic_trace(600, start=30, removals=15, seed=0)  # deterministic


def test_checkpoint_restart_by_hand():
    # step 10 s, checkpoint every 3 steps (5 s), restart 20 s; one failure at t=100 on 4 -> 3 nodes
    step = {4: 10.0, 3: 20.0}
    tr = Trace((0, 1, 2, 3), ((100.0, "remove", 2),), 200.0)
    r = simulate_checkpoint_restart(tr, step.__getitem__, 1.0, 3, 5.0, 20.0)
    # before: cycles of 35 s -> 2 done (70 s, 6 steps), 30 s lost; after: restart until 120,
    # then 80 s: cycle 65 s -> 1 done (3 steps), 15 s left < one 20 s step
    assert r.samples == 9
    assert r.breakdown == pytest.approx({"effective": 6 * 10 + 3 * 20, "lost": 30 + 15,
                                         "recovery": 0.0, "checkpoint": 15.0, "restart": 20.0})
    assert math.isclose(sum(r.breakdown.values()), 200.0)
    assert r.throughput == pytest.approx(9 / 200)


def test_checkpoint_restart_without_failures():
    tr = Trace((0, 1), (), 1000.0)
    r = simulate_checkpoint_restart(tr, lambda n: 10.0, 2.0, 10, 50.0, 500.0)
    assert r.samples == 2.0 * (6 * 10 + 10)  # 6 cycles of 150 s, then 10 more steps in 100 s


def model_and_templates():
    # steps of a few seconds, copies well under a second: the regime of the reference's traces
    layers = [LayerCost(f"l{i}", 0.01, 0.02, 3.0, 3.0, 9.0, 0.2, 1.0) for i in range(24)]
    node = NodeSpec(2, 100.0, intra_bw=2000.0, inter_bw=200.0)
    return pipeline_templates(layers, node, total_nodes=12, f=1, microbatches=8)


def test_amylum_loses_at_most_the_step_in_flight():
    ts = model_and_templates()
    tr = synthetic_trace(1000.0, start=12, removals=5, seed=1)
    r = simulate_amylum(tr, ts, 1, 64, 64.0, reconfigure_s=2.0)
    assert r.failures == 5
    assert math.isclose(sum(r.breakdown.values()), tr.horizon_s)
    taus = [instantiate(ts, n, 1, 64).makespan_s for n in range(7, 13)]
    assert r.breakdown["lost"] <= 6 * max(taus)  # ≤ one step per failure plus the unfinished tail
    assert r.breakdown["recovery"] > 5 * 2.0  # reconfiguration plus copying layers


def test_amylum_beats_checkpoint_restart_when_failures_are_frequent():
    ts = model_and_templates()
    tr = synthetic_trace(300.0, start=12, removals=5, seed=2)
    a = simulate_amylum(tr, ts, 1, 64, 64.0, reconfigure_s=2.0)
    step = lambda n: instantiate(ts, n, 1, 64).makespan_s
    b = best_checkpoint_interval(tr, step, 64.0, 10.0, 100.0, k_max=50)
    assert a.throughput > b.throughput


def test_trace_errors():
    with pytest.raises(ValueError, match="time order"):
        Trace((0, 1), ((5.0, "remove", 0), (1.0, "remove", 1)), 10.0)
    ts = model_and_templates()
    tr = Trace(tuple(range(12)), ((1.0, "remove", 99),), 10.0)
    with pytest.raises(ValueError, match="removes node 99, which is not up"):
        simulate_amylum(tr, ts, 1, 64, 64.0, 2.0)
