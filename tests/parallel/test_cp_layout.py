"""Plans with context-parallel LLM stages → each rank's role, groups and P2P peers (no processes)."""

from dataclasses import replace

import pytest

from amylum.parallel.layout import LayoutError, layout_from_plan
from amylum.planner.plan import Plan, StagePlan

ENCODERS = ["vision", "audio"]


def _enc(m: str, first: str) -> tuple[str, ...]:
    return (f"{m}.encoder.{first}", f"{m}.encoder.layers.0", f"{m}.encoder.layers.1", f"{m}.projector")


def _plan() -> Plan:
    """DP 2 over 14 ranks: a vision stage (ranks 0, 1) feeds an LLM stage of TP 2 x CP 2 (audio
    colocated; ranks 2-9), which feeds an LLM stage of TP 1 x CP 2 (ranks 10-13)."""
    return Plan(
        model="tiny-valm", placement="modality_parallel", dp=2, microbatch_size=1, num_microbatches=2,
        global_batch=4, world_size=14,
        stages=(
            StagePlan(0, "vision", _enc("vision", "patch_embed"), ranks=((0,), (1,))),
            StagePlan(1, "llm", _enc("audio", "conv") + ("llm.embed", "llm.layers.0"), tp=2, cp=2, inputs=(0,),
                      ranks=((2, 3, 4, 5), (6, 7, 8, 9))),
            StagePlan(2, "llm", ("llm.layers.1", "llm.head"), cp=2, inputs=(1,), ranks=((10, 11), (12, 13))),
        ),
    )


def test_roles_and_groups_of_cp_stages():
    layout = layout_from_plan(_plan(), ENCODERS, 2, 14)
    role = layout.role(5)  # replica 0 of stage 1: ranks [cp 0: 2, 3 | cp 1: 4, 5]
    assert (role.stage, role.replica, role.cp_index, role.tp_index) == (1, 0, 1, 1)
    assert layout.tp_group(5) == (4, 5)  # same CP index
    assert layout.cp_group(5) == (3, 5)  # same TP index
    assert layout.dp_group(5) == (5, 9)  # same TP and CP index, every replica
    assert layout.reduce_group(5) == (3, 5, 7, 9)  # FSDP: replicas x CP ranks of one TP index
    assert layout.reduce_group(10) == (10, 11, 12, 13) and layout.tp_group(10) == (10,)
    assert layout.cp(0) == 1 and layout.reduce_group(0) == (0, 1) == layout.dp_group(1)


def test_peers_of_cp_stages():
    layout = layout_from_plan(_plan(), ENCODERS, 2, 14)
    # The vision stage sends its features to every rank of the CP stage and sums one gradient per CP rank.
    assert layout.send_to(0, 1, "act") == (2, 3, 4, 5)
    assert layout.recv_sources(0, 1, "grad") == (2, 4)
    assert [layout.recv_from(r, 0, "act") for r in (2, 3, 4, 5)] == [0, 0, 0, 0]
    assert [layout.send_to(r, 0, "grad") for r in (2, 3, 4, 5)] == [(0,), (), (0,), ()]
    # CP rank c of one LLM stage talks to CP rank c of the next (TP 2 → TP 1 by the TP-width rule).
    assert [layout.send_to(r, 2, "act") for r in (2, 3, 4, 5)] == [(10,), (), (11,), ()]
    assert [layout.recv_from(r, 1, "act") for r in (10, 11, 12, 13)] == [2, 4, 6, 8]
    assert layout.send_to(11, 1, "grad") == (4, 5) and layout.recv_from(5, 2, "grad") == 11
    with pytest.raises(LayoutError, match="receives grad from 2 ranks of stage 1"):
        layout.recv_from(0, 1, "grad")


def test_cp_plans_the_runtime_cannot_run_are_rejected_with_reasons():
    plan = _plan()
    stages = list(plan.stages)
    with pytest.raises(LayoutError, match="cp 2 on an encoder stage"):
        layout_from_plan(replace(plan, stages=(replace(stages[0], cp=2, ranks=((0, 14), (1, 15))), *stages[1:]),
                                 world_size=16), ENCODERS, 2, 16)
    with pytest.raises(LayoutError, match=r"CP degrees \{1: 2, 2: 4\}"):
        layout_from_plan(replace(plan, stages=(*stages[:2], replace(stages[2], cp=4, ranks=((10, 11, 14, 15), (12, 13, 16, 17)))),
                                 world_size=18), ENCODERS, 2, 18)
    with pytest.raises(LayoutError, match=r"do not form 2 replicas of TP 1 x CP 2"):
        layout_from_plan(replace(plan, stages=(stages[0], replace(stages[1], cp=2, tp=1), stages[2])), ENCODERS, 2, 14)
