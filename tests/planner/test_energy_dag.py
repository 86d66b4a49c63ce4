"""Computation DAG construction from amylum's action lists."""

import pytest

from amylum.planner.energy.actions import dag_from_actions
from amylum.planner.energy.dag import DAGError
from amylum.planner.energy.profiles import AnalyticGPU, analytic
from amylum.planner.schedule import Action, StageGraph, build_schedule

GPU = AnalyticGPU(f_max_mhz=1500, f_min_mhz=1200, step_mhz=100)


def profile(stages, kinds="FBW"):
    return analytic({(s, k): 0.01 * (s + 1) for s in stages for k in kinds}, GPU)


def edges_by_label(dag):
    return {(dag.nodes[u].label, dag.nodes[v].label) for u, v in dag.edges}


def test_linear_1f1b_dependencies():
    g = StageGraph({0: (), 1: (0,), 2: (1,)}, {s: True for s in range(3)}, {s: True for s in range(3)})
    dag = dag_from_actions(build_schedule(g, 4), profile(range(3)), 70.0)
    assert len(dag.nodes) == 3 * 4 * 2
    e = edges_by_label(dag)
    for m in range(4):
        assert (f"F0.{m}@r0", f"F1.{m}@r1") in e and (f"F1.{m}@r1", f"F2.{m}@r2") in e
        assert (f"B2.{m}@r2", f"B1.{m}@r1") in e and (f"B1.{m}@r1", f"B0.{m}@r0") in e
    # 1F1B order on stage 0 of 3: two warm-up forwards, then F2, B0, F3 (S − s forwards before B0)
    order0 = [dag.nodes[i].label for i in dag.order[0]]
    assert order0[:5] == ["F0.0@r0", "F0.1@r0", "F0.2@r0", "B0.0@r0", "F0.3@r0"]
    assert dag.total_blocking_power() == pytest.approx(210.0)


def test_two_encoders_and_a_frozen_stage():
    # stage 0: frozen vision encoder (no backward), stage 1: trainable audio encoder, both feed
    # LLM stage 2, which feeds LLM stage 3.
    g = StageGraph({0: (), 1: (), 2: (0, 1), 3: (2,)},
                   {0: False, 1: True, 2: True, 3: True}, {0: False, 1: True, 2: True, 3: True})
    sched = build_schedule(g, 3)
    dag = dag_from_actions(sched, profile(range(4)), {0: 60.0, 1: 70.0, 2: 70.0, 3: 70.0},
                           gpus_per_stage={2: 2, 3: 2})
    kinds0 = {dag.nodes[i].kind for i in dag.order[0]}
    assert kinds0 == {"F"}  # frozen: no backward nodes at all
    e = edges_by_label(dag)
    for m in range(3):
        assert (f"F0.{m}@r0", f"F2.{m}@r2") in e and (f"F1.{m}@r1", f"F2.{m}@r2") in e
        assert (f"B2.{m}@r2", f"B1.{m}@r1") in e
        assert not any(v.startswith("B0") for _, v in e)
    assert dag.blocking_power_w == {0: 60.0, 1: 70.0, 2: 140.0, 3: 140.0}
    dag.topological_order()  # acyclic


def test_split_w_and_per_microbatch_profile():
    g = StageGraph({0: (), 1: (0,)}, {0: True, 1: True}, {0: True, 1: True})
    prof = profile(range(2))
    table = dict(prof.table)
    table[(1, "F", 2)] = GPU.options(0.5)  # a heavy microbatch (e.g. many images)
    prof = type(prof)(table)
    dag = dag_from_actions(build_schedule(g, 3, split_w=True), prof)
    labels = [n.label for n in dag.nodes]
    assert "W1.0@r1" in labels
    heavy = next(n for n in dag.nodes if n.label == "F1.2@r1")
    light = next(n for n in dag.nodes if n.label == "F1.1@r1")
    assert heavy.options[0].time_s > 10 * light.options[0].time_s


def test_unmatched_send_and_cycle_are_typed_errors():
    prof = profile(range(2))
    with pytest.raises(DAGError, match="SEND"):
        dag_from_actions({0: [Action("F", 0, 0), Action("SEND", 0, 0, 1, "act")], 1: [Action("F", 1, 0)]}, prof)
    # stage 1 waits for stage 0's F1 before its own F0, and stage 0 waits for stage 1 first
    bad = {
        0: [Action("RECV", 0, 0, 1, "grad"), Action("F", 0, 0), Action("SEND", 0, 0, 1, "act")],
        1: [Action("RECV", 1, 0, 0, "act"), Action("F", 1, 0), Action("SEND", 1, 0, 0, "grad")],
    }
    with pytest.raises(DAGError, match="cycle"):
        dag_from_actions(bad, prof)
