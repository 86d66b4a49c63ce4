"""A planner Plan drives the runtime: layout checks before any process group, and a 4-rank run."""

from dataclasses import replace

import pytest

import plan_workers
from amylum.parallel.layout import LayoutError, layout_from_plan
from amylum.planner.plan import StagePlan
from dist_harness import run_world


def test_layout_roles_and_peers_across_tp_widths():
    layout = layout_from_plan(plan_workers.modality_parallel_plan(), ["vision", "audio"], 2, 4)
    assert [layout.role(r).stage for r in range(4)] == [2, 2, 0, 1]
    # both LLM TP ranks receive the vision features from rank 2; rank 2 gets gradients from LLM TP rank 0
    assert layout.recv_from(0, 0, "act") == 2 and layout.recv_from(1, 0, "act") == 2
    assert layout.send_to(2, 2, "act") == (0, 1)
    assert layout.recv_from(2, 2, "grad") == 0 and layout.send_to(0, 0, "grad") == (2,) and layout.send_to(1, 0, "grad") == ()


def test_bad_plans_are_rejected_with_reasons_before_launch():
    plan = plan_workers.modality_parallel_plan()
    with pytest.raises(LayoutError, match="plan is for 4 ranks but 8 processes"):
        layout_from_plan(plan, ["vision", "audio"], 2, 8)
    with pytest.raises(LayoutError, match="model has 3"):
        layout_from_plan(plan, ["vision", "audio"], 3, 4)
    split = replace(plan, stages=(
        StagePlan(0, "vision", ("vision.encoder.patch_embed", "vision.encoder.layers.0"), ranks=((2,),)),
        StagePlan(1, "vision", ("vision.encoder.layers.1", "vision.projector", "audio.encoder.conv"), ranks=((3,),)),
        plan.stages[2],
    ))
    with pytest.raises(LayoutError, match="split over stages"):
        layout_from_plan(split, ["vision", "audio"], 2, 4)
    with pytest.raises(LayoutError, match="belong to no module"):
        layout_from_plan(plan, ["vision"], 2, 4)


def test_plan_driven_modality_parallel_with_llm_tp2_matches_single_process():
    worst = run_world(plan_workers.plan_worker, 4)
    assert max(worst) < plan_workers.TOL
