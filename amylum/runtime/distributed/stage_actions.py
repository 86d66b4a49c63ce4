"""Which action list each pipeline stage runs: the plan's schedule, the same on every rank.

1F1B and GPipe lists follow from the stage graph alone (``build_schedule``). A zero-bubble plan
(``schedule = "zb"``) has no such closed form: its order comes from a list scheduler that runs
the cost model's F, B and W durations under per-stage memory caps (``planner/zerobubble.py``).
The lists run here are the ones the simulator replays for the plan (``SimResult.schedule``, what
``amylum simulate PLAN`` shows), so what runs is what was simulated, with W deferred where the
simulator defers it (the executor then splits B and W for those microbatches). Every rank
derives them from the same plan, model description and cluster with plain arithmetic: the
lists are identical everywhere without any communication.

The zero-bubble lists are ordered on the plan's own model description, whose frozen flags could
differ from the config's model (a plan made for another freezing scenario). The lists are
therefore checked against the runtime stage graph: the same F, B and messages per stage as the
1F1B lists of that graph, in another order. ``check_plan`` does this before any process group
exists (the launch fails with the reason) and keeps the lists it checked; otherwise every rank
stops with the same error before its first step (a mismatch would leave a RECV without its
SEND: a hang).
"""

from __future__ import annotations

from collections import Counter

from torch import nn

from amylum.parallel.layout import LayoutError, RuntimeLayout
from amylum.parallel.pipeline import LLM
from amylum.planner.schedule import Action, StageGraph, build_schedule


def stage_has_backward(layout: RuntimeLayout, stage: int, model: nn.Module) -> bool:
    """Every stage runs backward except an encoder stage whose whole branch is frozen: it has no
    weights to update and nothing upstream of it trains (frozen-aware schedules)."""
    a = next(a for a in layout.assignments if a.stage == stage)
    if a.component == LLM:
        return True
    return any(p.requires_grad for p in model.encoders[a.component].parameters())


def runtime_stage_graph(layout: RuntimeLayout, model: nn.Module) -> StageGraph:
    """The stage graph the ranks run, decided on the whole model (every rank derives the same)."""
    flags = {s: stage_has_backward(layout, s, model) for s in layout.stage_ranks}
    return StageGraph(inputs=layout.stage_inputs, has_bwd=flags, has_w=flags)


def zero_bubble_lists(graph: StageGraph, plan, model_spec, cluster) -> tuple[dict[int, list[Action]], list[str]]:
    """The simulator's zero-bubble lists for ``plan`` and the reasons they do not fit ``graph`` (none: they do)."""
    from amylum.planner.simulate import simulate

    lists = simulate(plan, model_spec, cluster).schedule
    return lists, zero_bubble_mismatches(lists, graph, plan.num_microbatches)


def zero_bubble_mismatches(lists: dict[int, list[Action]], graph: StageGraph, num_microbatches: int) -> list[str]:
    """Why ``lists`` cannot run on ``graph``: other work or messages than its 1F1B lists, per stage."""
    return _mismatches(lists, build_schedule(graph, num_microbatches, "1f1b"))


def stage_action_lists(graph: StageGraph, num_microbatches: int, schedule: str,
                       planned=None) -> dict[int, list[Action]]:
    """Every stage's action list for ``schedule`` ("1f1b", "gpipe" or "zb") on ``graph``, the
    runtime stage graph. ``zb`` needs ``planned``, the run's CheckedPlan: its plan, ModelSpec and
    ClusterSpec (those written to the run's plan.json) give the durations the order is found on."""
    if schedule != "zb":
        return build_schedule(graph, num_microbatches, schedule)
    if planned is None:
        raise ValueError("a zero-bubble schedule needs the plan with its model and cluster description")
    if planned.plan.num_microbatches != num_microbatches:
        raise ValueError(f"the plan has {planned.plan.num_microbatches} microbatches, the run {num_microbatches}")
    lists = getattr(planned, "zb_lists", None)  # check_plan's, made from the same plan
    if lists is None:
        lists, errors = zero_bubble_lists(graph, planned.plan, planned.model_spec, planned.cluster)
    else:
        errors = zero_bubble_mismatches(lists, graph, num_microbatches)
    if errors:
        raise LayoutError("the plan's zero-bubble action lists do not fit the model's stages (was the plan made for "
                         "another freezing scenario?):\n  - " + "\n  - ".join(errors))
    return lists


def _work(actions: list[Action]) -> Counter:
    """What a list does, in any order; W left out (it only says when the weight gradient runs)."""
    return Counter((a.op, a.mb, a.peer, a.data) for a in actions if a.op != "W")


def _mismatches(lists: dict[int, list[Action]], reference: dict[int, list[Action]]) -> list[str]:
    if sorted(lists) != sorted(reference):
        return [f"the lists have stages {sorted(lists)}, the model's layout {sorted(reference)}"]
    return [f"stage {s}: its zero-bubble list does other work or messages than its stage graph needs"
            for s in sorted(reference) if _work(lists[s]) != _work(reference[s])]
